package prefetch

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
)

// Source is where blocks come from: an opened dataset.
type Source interface {
	Schema() *arrow.Schema
	ReadBlock(ctx context.Context, block int, mem memory.Allocator) (arrow.RecordBatch, error)
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
	// Images, if set, decodes a column of images in every batch; the
	// source must then be a RowSource.
	Images *Images
	Pool   *Pool
	Mem    memory.Allocator
	Logger *slog.Logger
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
	if o.Mem == nil {
		o.Mem = memory.DefaultAllocator
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
	out            chan item
	cancel         context.CancelFunc
	wg             sync.WaitGroup
	skipped        atomic.Int64
	skippedSamples atomic.Int64
	schema         *arrow.Schema
}

type item struct {
	b   *Batch
	err error
}

// Start begins producing the batches of plan from sample from on. The caller
// must Close the stream.
func Start(ctx context.Context, src Source, plan *shard.RankPlan, from int64, opts Options) (*Stream, error) {
	opts.ensureDefaults()
	if opts.BatchSize <= 0 {
		return nil, shard.Invalidf("batch size %d < 1", opts.BatchSize)
	}
	if from < 0 || from > plan.Len() {
		return nil, shard.Invalidf("start sample %d is outside the rank's %d samples", from, plan.Len())
	}
	s := &Stream{out: make(chan item, opts.Ahead), schema: src.Schema()}
	p := &producer{src: src, plan: plan, from: from, opts: opts, s: s}
	if opts.Images != nil {
		st, err := newImageStage(opts.Images, src, &p.opts, func(n int64) { s.skippedSamples.Add(n) })
		if err != nil {
			return nil, err
		}
		p.images, s.schema = st, st.schema
	}
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.wg.Go(func() { p.run(ctx) })
	return s, nil
}

// Next returns the next batch, or io.EOF after the last one.
func (s *Stream) Next(ctx context.Context) (*Batch, error) {
	select {
	case it, ok := <-s.out:
		if !ok {
			return nil, io.EOF
		}
		return it.b, it.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// QueueDepth is the number of ready batches waiting.
func (s *Stream) QueueDepth() int { return len(s.out) }

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
}

// future is a block being read.
type future struct {
	block int
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
// segment's block is the previous window's last block, still held.
type job struct {
	w       shard.Window
	futures []*future
}

type producer struct {
	src    Source
	plan   *shard.RankPlan
	from   int64
	opts   Options
	s      *Stream
	ahead  *gauge
	images *imageStage // nil: no images to decode
}
