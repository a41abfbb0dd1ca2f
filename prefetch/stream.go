package prefetch

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
)

// Source is where blocks come from: an opened dataset, or the block cache in
// front of one.
type Source interface {
	Schema() *arrow.Schema
	ReadBlock(ctx context.Context, block int, mem memory.Allocator) (arrow.RecordBatch, error)
}

// Sizer is an optional Source method: the stored size of a block, from
// which a stream guesses what decoding it will take before it has decoded any.
type Sizer interface {
	BlockBytes(block int) int64
}

// Options configure one stream.
type Options struct {
	BatchSize int
	DropLast  bool
	// Ahead is how many ready batches may wait in the queue (default 4).
	Ahead int
	// ReadAhead is how many blocks this stream reads at once (default 4).
	ReadAhead int
	OnError   shard.OnError
	// Images, if set, decodes a column of images in every batch.
	Images *Images
	Pool   *Pool
	// Lane is the stream's queue on Pool (default: a lane of its own).
	Lane *Lane
	// Memory, when set, is the budget that reads wait for, and the default
	// allocator.
	Memory *Memory
	// Mem allocates every block, window and batch (default: Memory, else
	// Go's allocator).
	Mem     memory.Allocator
	Logger  *slog.Logger
	Metrics *Metrics
}

func (o *Options) ensureDefaults() {
	if o.Ahead <= 0 {
		o.Ahead = 4
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = 4
	}
	if o.Pool == nil {
		o.Pool = NewPool(1)
	}
	if o.Lane == nil {
		o.Lane = o.Pool.Lane()
	}
	if o.Mem == nil {
		if o.Memory != nil {
			o.Mem = o.Memory
		} else {
			o.Mem = memory.DefaultAllocator
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Batch is a ready batch. The receiver owns Record and must release it.
type Batch struct {
	Seq int64
	// First and Next bound the planned samples this batch covers: resuming at
	// Next continues right after it. Next-First exceeds the rows only when
	// bad blocks were skipped.
	First, Next int64
	// Padding is how many trailing rows repeat earlier samples (even mode).
	Padding int64
	// Skipped is how many of the batch's samples were left out because
	// their image did not decode (OnError Skip); a batch may then have no
	// rows at all.
	Skipped int64
	Record  arrow.RecordBatch
}

// Stream produces one rank's batches for one epoch, from a start sample on.
type Stream struct {
	out     chan item
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	plan    *shard.RankPlan
	from    int64
	metrics *Metrics
	skipped atomic.Int64
	stallNs atomic.Int64
	mem     *Memory
	// waiting: a consumer waits in Next with nothing ready; inflight: bytes
	// reserved for reads not yet done. A waiting consumer with no read in
	// flight is starving: its next window passes the memory gate at once.
	waiting  atomic.Bool
	inflight atomic.Int64
	// prepared: started ahead by a Scheduler, before any session asked.
	prepared bool
	// skippedSamples: samples left out because their image did not decode.
	skippedSamples atomic.Int64
	schema         *arrow.Schema
	pixels         *pixelBuffers // the image stage's, if any
}

type item struct {
	b   *Batch
	err error
}

// Start begins producing the batches of plan from sample from on. The caller
// must Close the stream.
func Start(ctx context.Context, src Source, plan *shard.RankPlan, from int64, opts Options) (*Stream, error) {
	return start(ctx, src, plan, from, opts, nil)
}

// start is Start with a hook called once the stream has asked for the
// blocks of its last window: the moment to prepare the next epoch.
func start(ctx context.Context, src Source, plan *shard.RankPlan, from int64, opts Options, onLast func()) (*Stream, error) {
	opts.ensureDefaults()
	if opts.BatchSize <= 0 {
		return nil, shard.Invalidf("batch size %d < 1", opts.BatchSize)
	}
	if from < 0 || from > plan.Len() {
		return nil, shard.Invalidf("start sample %d is outside the rank's %d samples", from, plan.Len())
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Stream{out: make(chan item, opts.Ahead), cancel: cancel, plan: plan, from: from, metrics: opts.Metrics,
		mem: opts.Memory, schema: src.Schema()}
	p := &producer{src: src, plan: plan, from: from, opts: opts, s: s, onLast: onLast}
	if sz, ok := src.(Sizer); ok {
		p.sizer = sz
	}
	if opts.Images != nil {
		st, err := newImageStage(opts.Images, src, &p.opts, func(n int64) { s.skippedSamples.Add(n) })
		if err != nil {
			cancel()
			return nil, err
		}
		p.images, s.schema, s.pixels = st, st.schema, st.buffers
	}
	s.wg.Go(func() { p.run(ctx) })
	return s, nil
}

// Next returns the next batch, or io.EOF after the last one. Time spent
// waiting on an empty queue counts as stall.
func (s *Stream) Next(ctx context.Context) (*Batch, error) {
	var it item
	var ok bool
	select {
	case it, ok = <-s.out:
		s.metrics.observeWait(0)
	default:
		t0 := time.Now()
		s.waiting.Store(true)
		if s.mem != nil {
			s.mem.Wake() // a read of ours waiting for memory may go now
		}
		select {
		case it, ok = <-s.out:
		case <-ctx.Done():
			s.waiting.Store(false)
			return nil, ctx.Err()
		}
		s.waiting.Store(false)
		d := time.Since(t0)
		s.stallNs.Add(int64(d))
		s.metrics.observeWait(d)
	}
	if !ok {
		return nil, io.EOF
	}
	return it.b, it.err
}

func (s *Stream) starving() bool { return s.waiting.Load() && s.inflight.Load() == 0 }

// Plan is the rank's plan for the stream's epoch.
func (s *Stream) Plan() *shard.RankPlan { return s.plan }

// From is the sample the stream started at.
func (s *Stream) From() int64 { return s.from }

// Prepared reports whether the stream was started ahead of its session, as
// the next epoch of an earlier one.
func (s *Stream) Prepared() bool { return s.prepared }

// QueueDepth is the number of ready batches waiting.
func (s *Stream) QueueDepth() int { return len(s.out) }

// QueueCap is the most ready batches that may wait.
func (s *Stream) QueueCap() int { return cap(s.out) }

// Stall is the time Next has waited on an empty queue.
func (s *Stream) Stall() time.Duration { return time.Duration(s.stallNs.Load()) }

// Skipped is the number of blocks skipped as bad input so far.
func (s *Stream) Skipped() int64 { return s.skipped.Load() }

// SkippedSamples is the number of samples left out so far because their
// image did not decode.
func (s *Stream) SkippedSamples() int64 { return s.skippedSamples.Load() }

// Schema is the schema of the stream's batches.
func (s *Stream) Schema() *arrow.Schema { return s.schema }

// Close stops the stream, waits for its goroutines and releases what it held.
func (s *Stream) Close() {
	s.cancel()
	s.wg.Wait()
	for it := range s.out {
		if it.b != nil {
			it.b.Record.Release()
		}
	}
	if s.pixels != nil {
		s.pixels.close()
	}
}

// future is a block being read.
type future struct {
	block int
	est   int64 // bytes reserved for it in the budget until it is read
	done  chan struct{}
	rec   arrow.RecordBatch
	err   error
	ahead *gauge
	// mu orders release against the reader's finish: a future may be given
	// up while its block is still being read.
	mu       sync.Mutex
	released bool // by the assembler, or by run when it drains
}

// job is one window and the futures of its segments; a nil future means the
// segment's block is the previous window's last block, still held. products
// is reserved in the memory budget for what assembling it makes.
type job struct {
	w        shard.Window
	futures  []*future
	products int64
}

type producer struct {
	src    Source
	sizer  Sizer
	plan   *shard.RankPlan
	from   int64
	opts   Options
	s      *Stream
	ahead  *gauge
	onLast func()
	// ratio is decoded bytes per stored byte, or decoded bytes per block
	// without a Sizer, learned from the blocks read so far; it sizes the
	// reservations of later reads.
	ratio atomic.Int64 // fixed point, 1/1024
	// rowBytes is decoded bytes per row, learned likewise.
	rowBytes atomic.Int64
	images   *imageStage // nil: no images to decode
}
