package prefetch

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/compute"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// piece is rows of one record batch on their way into batches: the rows
// idx of rec in that order, or all of rec's rows when idx is nil. planned[t]
// is the planned sample index of the piece's t-th row, and refs[t] (kept
// only when images are decoded) its block and row there. A piece owns one
// reference to rec.
type piece struct {
	rec     arrow.RecordBatch
	idx     []int32
	planned []int64
	refs    []rowRef
	padding bool
}

func (p piece) rows() int { return len(p.planned) }

// split returns the first n rows and the rest; each owns a reference.
func (p piece) split(n int) (piece, piece) {
	head, tail := p, p
	head.planned, tail.planned = p.planned[:n], p.planned[n:]
	if p.refs != nil {
		head.refs, tail.refs = p.refs[:n], p.refs[n:]
	}
	if p.idx != nil {
		head.idx, tail.idx = p.idx[:n], p.idx[n:]
		p.rec.Retain()
		return head, tail
	}
	head.rec = p.rec.NewSlice(0, int64(n))
	tail.rec = p.rec.NewSlice(int64(n), p.rec.NumRows())
	p.rec.Release()
	return head, tail
}

// materialize returns the piece's rows as a record batch, releasing the piece.
func (p piece) materialize(ctx context.Context, mem memory.Allocator) (arrow.RecordBatch, error) {
	if p.idx == nil {
		return p.rec, nil
	}
	defer p.rec.Release()
	indices := array.NewInt32Data(array.NewData(arrow.PrimitiveTypes.Int32, len(p.idx),
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Int32Traits.CastToBytes(p.idx))}, nil, 0, 0))
	defer indices.Release()
	ctx = compute.WithAllocator(ctx, mem)
	out, err := compute.Take(ctx, *compute.DefaultTakeOptions(), compute.NewDatumWithoutOwning(p.rec), compute.NewDatumWithoutOwning(indices))
	if err != nil {
		return nil, fmt.Errorf("prefetch: taking shuffled rows: %w", err)
	}
	return out.(*compute.RecordDatum).Value, nil
}

// batcher cuts pieces into batches of BatchSize rows.
type batcher struct {
	ctx     context.Context
	opts    *Options
	emit    func(*Batch) error
	images  *imageStage // nil: none to decode
	pending []piece
	rows    int
	seq     int64
}

func (b *batcher) add(p piece) error {
	if p.rows() == 0 {
		p.rec.Release()
		return nil
	}
	b.pending = append(b.pending, p)
	b.rows += p.rows()
	for b.rows >= b.opts.BatchSize {
		if err := b.cut(b.opts.BatchSize); err != nil {
			return err
		}
	}
	return nil
}

// flush emits what is pending at the end of the epoch, unless drop_last.
func (b *batcher) flush(last bool) error {
	if b.rows == 0 || (last && b.opts.DropLast) {
		return nil
	}
	return b.cut(b.rows)
}

func (b *batcher) cut(n int) error {
	var take []piece
	for got := 0; got < n; {
		p := b.pending[0]
		if got+p.rows() > n {
			head, tail := p.split(n - got)
			b.pending[0] = tail
			take = append(take, head)
			break
		}
		take = append(take, p)
		b.pending = b.pending[1:]
		got += p.rows()
	}
	b.rows -= n
	bt := &Batch{First: take[0].planned[0]}
	last := take[len(take)-1]
	bt.Next = last.planned[len(last.planned)-1] + 1
	recs := make([]arrow.RecordBatch, 0, len(take))
	var refs []rowRef
	var err error
	for i, p := range take {
		if p.padding {
			bt.Padding += int64(p.rows())
		}
		refs = append(refs, p.refs...)
		var r arrow.RecordBatch
		if r, err = p.materialize(b.ctx, b.opts.Mem); err != nil {
			for _, q := range take[i+1:] {
				q.rec.Release()
			}
			break
		}
		recs = append(recs, r)
	}
	if err == nil {
		bt.Record, err = concatRecords(recs, b.opts.Mem)
	}
	for _, r := range recs {
		r.Release()
	}
	if err != nil {
		return err
	}
	if b.images != nil {
		// A batch whose every image was skipped still goes out, with no
		// rows: it carries the count and the resume point.
		if err := b.images.apply(b.ctx, bt, refs); err != nil {
			bt.Record.Release()
			return err
		}
	}
	bt.Seq = b.seq
	b.seq++
	return b.emit(bt)
}

func (b *batcher) release() {
	for _, p := range b.pending {
		p.rec.Release()
	}
	b.pending = nil
}

// concatRecords joins record batches of one schema into one; with a single
// input it returns it with a new reference and copies nothing.
func concatRecords(recs []arrow.RecordBatch, mem memory.Allocator) (arrow.RecordBatch, error) {
	if len(recs) == 1 {
		recs[0].Retain()
		return recs[0], nil
	}
	sc := recs[0].Schema()
	cols := make([]arrow.Array, sc.NumFields())
	var rows int64
	for _, r := range recs {
		rows += r.NumRows()
	}
	parts := make([]arrow.Array, len(recs))
	for c := range cols {
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		col, err := array.Concatenate(parts, mem)
		if err != nil {
			for _, done := range cols[:c] {
				done.Release()
			}
			return nil, fmt.Errorf("prefetch: concatenating column %q: %w", sc.Field(c).Name, err)
		}
		cols[c] = col
	}
	out := array.NewRecordBatch(sc, cols, rows)
	for _, c := range cols {
		c.Release()
	}
	return out, nil
}
