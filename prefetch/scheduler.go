package prefetch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loaderd/loaderd/shard"
)

// Scheduler runs the streams of every session of the daemon on one shared
// Pool and under one Memory budget, and looks ahead across epochs: each
// session asks for one epoch at a time, so when a stream has asked for the
// blocks of its epoch's last window, the scheduler starts the same rank's
// next epoch, and hands that stream to the session that asks for exactly it.
// A prepared stream works like any other: its queue and read-ahead are
// bounded, it reads on its own lane of the pool, and it waits for memory at
// the same gate. One that nobody claims within LookaheadTTL is closed, so a
// client that never comes back costs bounded memory for a bounded time.
//
// Ranks never wait for each other: no stream waits for another's progress,
// only for the pool's workers (served in turn) and for memory (first come,
// first served, with every reservation bounded).
type Scheduler struct {
	opts SchedulerOptions
	base context.Context
	stop context.CancelFunc

	mu       sync.Mutex
	closed   bool
	prepared map[EpochKey]*preparedEpoch
	expiring sync.WaitGroup

	stats struct{ prepared, claimed, expired, refused atomic.Int64 }
}

// SchedulerOptions configure a Scheduler.
type SchedulerOptions struct {
	Pool    *Pool
	Memory  *Memory // nil: reads do not wait for memory
	Metrics *Metrics
	Logger  *slog.Logger
	// LookaheadTTL is how long a prepared epoch waits for its session
	// (default 2 minutes: an evaluation between epochs may take a while).
	LookaheadTTL time.Duration
	// MaxPrepared bounds the prepared epochs waiting at once (default 64);
	// 0 takes the default, a negative value turns look-ahead off.
	MaxPrepared int
}

// EpochKey says which batches a stream yields: two requests with equal keys
// get the same batches in the same order, so a stream prepared for one can
// serve the other.
type EpochKey struct {
	// Dataset identifies the opened dataset (its files and versions, the
	// columns and format options): any comparable value.
	Dataset any
	// Shuffled, Seed and WindowRows give the order.
	Shuffled   bool
	Seed       uint64
	WindowRows int64
	Rank       int
	World      int
	Mode       shard.Mode
	Epoch      int64
	BatchSize  int
	DropLast   bool
	// Extra carries anything else that changes the batches.
	Extra string
}

// Request asks a Scheduler for one rank's epoch.
type Request struct {
	Key    EpochKey
	Source Source
	// Plan returns the rank's plan for an epoch: Key.Epoch now, and the
	// epochs after it when they are prepared.
	Plan func(epoch int64) (*shard.RankPlan, error)
	// From is the first sample to produce (a resume cursor).
	From int64
	// Options: the scheduler sets BatchSize and DropLast from Key, and Pool,
	// Memory and Metrics from its own.
	Options Options
}

type preparedEpoch struct {
	s     *Stream
	st    *streamState
	timer *time.Timer
}

// streamState is what the scheduler knows of a stream it started; guarded by
// Scheduler.mu.
type streamState struct {
	req      Request
	unowned  bool // prepared, not yet claimed
	reached  bool // its fetcher has reached the epoch's last window
	prepared bool // its next epoch was asked for
}

// NewScheduler returns a scheduler; Close it to stop every stream it still owns.
func NewScheduler(opts SchedulerOptions) *Scheduler {
	if opts.Pool == nil {
		opts.Pool = NewPool(1)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LookaheadTTL <= 0 {
		opts.LookaheadTTL = 2 * time.Minute
	}
	if opts.MaxPrepared == 0 {
		opts.MaxPrepared = 64
	}
	base, stop := context.WithCancel(context.Background())
	return &Scheduler{opts: opts, base: base, stop: stop, prepared: map[EpochKey]*preparedEpoch{}}
}

// ErrClosed is returned by Open after Close.
var ErrClosed = errors.New("prefetch: scheduler closed")

// Open returns a stream for the request: the prepared one when a stream for
// exactly this epoch was started ahead and the request starts at sample 0,
// else a new one. The caller must Close it.
func (s *Scheduler) Open(req Request) (*Stream, error) {
	if req.From == 0 {
		if st := s.claim(req.Key); st != nil {
			return st, nil
		}
	}
	plan, err := req.Plan(req.Key.Epoch)
	if err != nil {
		return nil, err
	}
	stream, _, err := s.start(req, plan, false)
	return stream, err
}

func (s *Scheduler) start(req Request, plan *shard.RankPlan, ahead bool) (*Stream, *streamState, error) {
	o := req.Options
	o.BatchSize, o.DropLast = req.Key.BatchSize, req.Key.DropLast
	o.Pool, o.Memory, o.Metrics = s.opts.Pool, s.opts.Memory, s.opts.Metrics
	if o.Logger == nil {
		o.Logger = s.opts.Logger
	}
	o.Lane = nil // each stream is served in turn with the others
	if o.Images != nil {
		// A prepared epoch's transforms draw that epoch's randomness.
		im := *o.Images
		im.Epoch = req.Key.Epoch
		o.Images = &im
	}
	if s.isClosed() {
		return nil, nil, ErrClosed
	}
	st := &streamState{req: req, unowned: ahead}
	stream, err := start(s.base, req.Source, plan, req.From, o, func() { s.reachedLast(st) })
	if err != nil {
		return nil, nil, err
	}
	stream.prepared = ahead
	return stream, st, nil
}

func (s *Scheduler) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// reachedLast is every stream's hook: its fetcher has reached the last window
// of the epoch. A prepared stream nobody claimed yet prepares no further
// (until it is claimed), so look-ahead never runs more than one epoch ahead of
// a session.
func (s *Scheduler) reachedLast(st *streamState) {
	s.mu.Lock()
	st.reached = true
	own := !st.unowned
	s.mu.Unlock()
	if own {
		s.prepareNext(st)
	}
}

// prepareNext starts the epoch after st's, once.
func (s *Scheduler) prepareNext(st *streamState) {
	s.mu.Lock()
	if st.prepared || s.opts.MaxPrepared < 0 {
		s.mu.Unlock()
		return
	}
	st.prepared = true
	next := st.req
	next.Key.Epoch++
	next.From = 0
	_, dup := s.prepared[next.Key]
	full := len(s.prepared) >= s.opts.MaxPrepared
	closed := s.closed
	s.mu.Unlock()
	switch {
	case dup || closed:
		return
	case full:
		s.stats.refused.Add(1)
		s.opts.Logger.Debug("not preparing the next epoch: too many prepared", "max", s.opts.MaxPrepared)
		return
	}
	plan, err := next.Plan(next.Key.Epoch)
	if err != nil {
		return // the session gets this error when it asks for the epoch
	}
	stream, nst, err := s.start(next, plan, true)
	if err != nil {
		return
	}
	pe := &preparedEpoch{s: stream, st: nst}
	s.mu.Lock()
	if _, dup := s.prepared[next.Key]; dup || s.closed {
		s.mu.Unlock()
		stream.Close()
		return
	}
	s.prepared[next.Key] = pe
	pe.timer = time.AfterFunc(s.opts.LookaheadTTL, func() { s.expire(next.Key, pe) })
	s.mu.Unlock()
	s.stats.prepared.Add(1)
}

// claim hands over the prepared stream for key, if any.
func (s *Scheduler) claim(key EpochKey) *Stream {
	s.mu.Lock()
	pe := s.prepared[key]
	if pe == nil {
		s.mu.Unlock()
		return nil
	}
	delete(s.prepared, key)
	pe.timer.Stop()
	pe.st.unowned = false
	reached := pe.st.reached
	s.mu.Unlock()
	s.stats.claimed.Add(1)
	if reached {
		s.prepareNext(pe.st)
	}
	return pe.s
}

func (s *Scheduler) expire(key EpochKey, pe *preparedEpoch) {
	s.mu.Lock()
	if s.closed || s.prepared[key] != pe {
		s.mu.Unlock()
		return
	}
	delete(s.prepared, key)
	s.expiring.Add(1)
	s.mu.Unlock()
	defer s.expiring.Done()
	s.stats.expired.Add(1)
	s.opts.Logger.Debug("prepared epoch unclaimed: closed", "rank", key.Rank, "epoch", key.Epoch)
	pe.s.Close()
}

// Close stops every prepared stream and refuses new ones. Streams handed
// out by Open stop too (their contexts end); their owners still Close them.
func (s *Scheduler) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	prepared := s.prepared
	s.prepared = map[EpochKey]*preparedEpoch{}
	s.mu.Unlock()
	s.stop()
	for _, pe := range prepared {
		pe.timer.Stop()
		pe.s.Close()
	}
	s.expiring.Wait()
}

// SchedulerStats counts look-ahead since the start.
type SchedulerStats struct {
	// Waiting is the number of prepared epochs not yet claimed.
	Waiting int
	// Prepared, Claimed and Expired count epochs started ahead, handed to a
	// session, and closed unclaimed; Refused counts epochs not prepared
	// because MaxPrepared were waiting.
	Prepared, Claimed, Expired, Refused int64
}

// Stats returns the look-ahead counters.
func (s *Scheduler) Stats() SchedulerStats {
	s.mu.Lock()
	n := len(s.prepared)
	s.mu.Unlock()
	return SchedulerStats{Waiting: n, Prepared: s.stats.prepared.Load(), Claimed: s.stats.claimed.Load(),
		Expired: s.stats.expired.Load(), Refused: s.stats.refused.Load()}
}
