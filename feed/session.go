package feed

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/prefetch"
)

// session is one open stream: one rank of one job reading one epoch.
type session struct {
	id      string
	job     string
	rank    int32
	world   int32
	epoch   int64
	plan    string // the global plan's fingerprint
	started time.Time

	batches, rows, bytes atomic.Int64
	stream               *prefetch.Stream

	transport atomic.Int32 // a Transport, once chosen
	// offer is the session's shared-memory ring, waiting for its client or
	// claimed; nil on gRPC.
	offer  atomic.Pointer[shm.Offer]
	inline atomic.Int64 // batches of a shm session that went inline
}

// sessions is the registry behind Status and the shm hand-off.
type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	seq  atomic.Uint64
}

func newSessions() *sessions { return &sessions{byID: map[string]*session{}} }

func (r *sessions) add(s *session) {
	r.mu.Lock()
	r.byID[s.id] = s
	r.mu.Unlock()
}

func (r *sessions) remove(id string) {
	r.mu.Lock()
	delete(r.byID, id)
	r.mu.Unlock()
}

// offer is the shared-memory ring session id offers its client, or nil.
func (r *sessions) offer(id string) *shm.Offer {
	r.mu.Lock()
	s := r.byID[id]
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.offer.Load()
}

func (r *sessions) status(now time.Time) []*feedv1.SessionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*feedv1.SessionStatus, 0, len(r.byID))
	for _, s := range r.byID {
		st := &feedv1.SessionStatus{
			SessionId: s.id, Job: s.job, Rank: s.rank, WorldSize: s.world, Epoch: s.epoch,
			BatchesSent: s.batches.Load(), RowsSent: s.rows.Load(), BytesSent: s.bytes.Load(),
			Transport: transportToProto(Transport(s.transport.Load())),
		}
		if secs := now.Sub(s.started).Seconds(); secs > 0 {
			st.BatchesPerSecond = float64(st.BatchesSent) / secs
		}
		st.AgeSeconds = now.Sub(s.started).Seconds()
		if s.stream != nil {
			st.QueueDepth = int32(s.stream.QueueDepth())
			st.QueueCapacity = int32(s.stream.QueueCap())
			st.StallSeconds = s.stream.Stall().Seconds()
			st.Prepared = s.stream.Prepared()
		}
		if o := s.offer.Load(); o != nil {
			rs := o.Ring.Stats()
			st.ShmRingBytes, st.ShmBytesHeld, st.ShmSlotsHeld = rs.Bytes, rs.BytesHeld, int32(rs.SlotsHeld)
			st.ShmWaitSeconds = rs.Waited.Seconds()
			st.ShmInlineBatches = s.inline.Load()
		}
		out = append(out, st)
	}
	return out
}

// plans groups the open sessions by job, epoch and global plan: one node's
// view of each multi-node plan, to compare with the other nodes'.
func (r *sessions) plans() []*feedv1.PlanStatus {
	type key struct {
		job   string
		epoch int64
		world int32
		plan  string
	}
	r.mu.Lock()
	byKey := map[key]*feedv1.PlanStatus{}
	for _, s := range r.byID {
		k := key{s.job, s.epoch, s.world, s.plan}
		p := byKey[k]
		if p == nil {
			p = &feedv1.PlanStatus{Job: s.job, Epoch: s.epoch, WorldSize: s.world, PlanFingerprint: s.plan}
			byKey[k] = p
		}
		p.Ranks = append(p.Ranks, s.rank)
	}
	r.mu.Unlock()
	out := make([]*feedv1.PlanStatus, 0, len(byKey))
	for _, p := range byKey {
		slices.Sort(p.Ranks)
		p.Ranks = slices.Compact(p.Ranks)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *feedv1.PlanStatus) int {
		return cmp.Or(cmp.Compare(a.GetJob(), b.GetJob()), cmp.Compare(a.GetEpoch(), b.GetEpoch()),
			cmp.Compare(a.GetPlanFingerprint(), b.GetPlanFingerprint()))
	})
	return out
}

// snapshot returns the open sessions.
func (r *sessions) snapshot() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.byID))
	for _, s := range r.byID {
		out = append(out, s)
	}
	return out
}
