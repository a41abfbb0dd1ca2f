package prefetch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/shard"
)

// Images asks a stream to decode a column of encoded images in every batch:
// once a batch's rows are assembled, each row's image is decoded and
// transformed on the shared pool, straight into one buffer for the batch,
// and the column becomes a fixed-shape tensor column.
type Images struct {
	Column   int // in the source's schema
	Pipeline *decode.Pipeline
	Decoder  decode.Decoder
	// Epoch seeds the random transforms with the pipeline's seed and each
	// sample's row in the dataset. A Scheduler sets it to the epoch it starts.
	Epoch int64
	// Rows numbers and names the source's rows (default: the source itself,
	// when it does).
	Rows Rows
}

// Rows numbers and names the rows of a source's blocks: a stream that
// decodes images needs that for each sample's random seed and for errors
// that name the image. shard.Dataset is one.
type Rows interface {
	// RowID is the row's index in the whole dataset, in file order.
	RowID(block int, row int64) int64
	// RowPlace names the row's file and place in it.
	RowPlace(block int, row int64) (file, where string)
}

// ImageSchema is the schema of a stream's batches when the named column of
// in is decoded by p: that column becomes p's tensor type. It also returns
// the column's index.
func ImageSchema(in *arrow.Schema, column string, p *decode.Pipeline) (*arrow.Schema, int, error) {
	idx := in.FieldIndices(column)
	if len(idx) == 0 {
		return nil, 0, shard.Invalidf("decode_image: no column %q (columns: %v)", column, fieldNames(in))
	}
	f := in.Field(idx[0])
	if id := f.Type.ID(); id != arrow.BINARY && id != arrow.LARGE_BINARY {
		return nil, 0, shard.Invalidf("decode_image: column %q is %s, want binary (encoded image bytes)", column, f.Type)
	}
	fields := in.Fields()
	fields[idx[0]] = arrow.Field{Name: f.Name, Type: p.OutputType(), Metadata: f.Metadata}
	md := in.Metadata()
	return arrow.NewSchema(fields, &md), idx[0], nil
}

func fieldNames(sc *arrow.Schema) []string {
	out := make([]string, sc.NumFields())
	for i, f := range sc.Fields() {
		out[i] = f.Name
	}
	return out
}

// rowRef is a row of a block: which sample a batch row is.
type rowRef struct {
	block int
	row   int64
}

// imageStage runs Images for one stream.
type imageStage struct {
	Images
	src     Rows
	schema  *arrow.Schema
	opts    *Options
	buffers *pixelBuffers
	skipped func(int64)
}

func newImageStage(im *Images, src Source, opts *Options, skipped func(int64)) (*imageStage, error) {
	rs := im.Rows
	if rs == nil {
		var ok bool
		if rs, ok = src.(Rows); !ok {
			return nil, fmt.Errorf("prefetch: decoding images needs the rows of %T numbered (Images.Rows)", src)
		}
	}
	if im.Pipeline == nil || im.Decoder == nil {
		return nil, errors.New("prefetch: decoding images needs a pipeline and a decoder")
	}
	f := src.Schema().Field(im.Column)
	sc, _, err := ImageSchema(src.Schema(), f.Name, im.Pipeline)
	if err != nil {
		return nil, err
	}
	return &imageStage{Images: *im, src: rs, schema: sc, opts: opts,
		buffers: &pixelBuffers{keep: opts.Ahead + 2, mem: opts.Mem}, skipped: skipped}, nil
}

// apply decodes bt's image column in place. Rows whose image fails are an
// error naming the image, or, under OnError Skip, dropped and counted.
func (s *imageStage) apply(ctx context.Context, bt *Batch, refs []rowRef) error {
	rec := bt.Record
	n := int(rec.NumRows())
	samples := make([]decode.Sample, n)
	errs := make([]error, n)
	col := rec.Column(s.Column)
	for i := range n {
		if col.IsNull(i) {
			errs[i] = &decode.Error{Kind: decode.ErrCorrupt, Err: errors.New("the sample has no image")}
			continue
		}
		switch c := col.(type) {
		case *array.Binary:
			samples[i].Data = c.Value(i)
		case *array.LargeBinary:
			samples[i].Data = c.Value(i)
		}
		samples[i].Seed = s.Pipeline.SampleSeed(s.Epoch, s.src.RowID(refs[i].block, refs[i].row))
	}
	per := s.Pipeline.OutBytes()
	buf := memory.NewResizableBuffer(s.buffers)
	buf.Resize(n * per)
	defer buf.Release()
	s.decode(ctx, samples, buf.Bytes(), errs)

	var keep []int32
	for i, err := range errs {
		if err == nil {
			if keep != nil {
				keep = append(keep, int32(i))
			}
			continue
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		file, where := s.src.RowPlace(refs[i].block, refs[i].row)
		ie := &shard.InputError{File: file, Where: where, Class: shard.ErrBadInput, Err: err}
		if errors.Is(err, decode.ErrUnsupported) {
			ie.Class = shard.ErrUnsupported
		}
		if s.opts.OnError != shard.Skip {
			return ie
		}
		s.opts.Logger.Warn("skipping bad image", "err", ie)
		if keep == nil {
			keep = make([]int32, 0, n)
			for j := range i {
				keep = append(keep, int32(j))
			}
		}
		if i >= n-int(bt.Padding) {
			bt.Padding--
		}
	}
	cols := rec.Columns()
	rows := n
	if keep != nil {
		// Rare: move the good samples' pixels together and take their rows.
		b := buf.Bytes()
		for j, i := range keep {
			copy(b[j*per:(j+1)*per], b[int(i)*per:(int(i)+1)*per])
		}
		rows = len(keep)
		dropped := int64(n - rows)
		bt.Skipped += dropped
		s.skipped(dropped)
		taken, err := takeRows(ctx, rec, keep, s.opts.Mem)
		if err != nil {
			return err
		}
		defer taken.Release()
		cols = taken.Columns()
	}
	pix := memory.SliceBuffer(buf, 0, rows*per)
	tensor := s.Pipeline.TensorArray(pix, rows)
	pix.Release()
	defer tensor.Release()
	out := make([]arrow.Array, len(cols))
	copy(out, cols)
	out[s.Column] = tensor
	bt.Record = array.NewRecordBatch(s.schema, out, int64(rows))
	rec.Release()
	return nil
}

// decode runs the decoder over samples on the shared pool: in chunks of a
// few samples for a decoder that is called per core, in one call for one
// that batches itself.
func (s *imageStage) decode(ctx context.Context, samples []decode.Sample, dst []byte, errs []error) {
	n := len(samples)
	per := s.Pipeline.OutBytes()
	chunk := n
	if s.Decoder.Batch() > 0 {
		// Several chunks per worker even out images of unequal cost.
		chunk = max(s.Decoder.Batch(), (n+4*s.opts.Pool.Workers()-1)/(4*s.opts.Pool.Workers()))
	}
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Go(func() {
			err := s.opts.Lane.Do(ctx, func() {
				defer func() {
					if r := recover(); r != nil {
						for i := lo; i < hi; i++ {
							errs[i] = fmt.Errorf("prefetch: decoding images panicked: %v", r)
						}
					}
				}()
				s.Decoder.Decode(ctx, s.Pipeline, samples[lo:hi], dst[lo*per:hi*per], errs[lo:hi])
			})
			if err != nil {
				for i := lo; i < hi; i++ {
					errs[i] = err
				}
			}
		})
	}
	wg.Wait()
}

// takeRows returns the rows idx of rec.
func takeRows(ctx context.Context, rec arrow.RecordBatch, idx []int32, mem memory.Allocator) (arrow.RecordBatch, error) {
	p := piece{rec: rec, idx: idx, planned: make([]int64, len(idx))}
	rec.Retain()
	return p.materialize(ctx, mem)
}

// pixelBuffers recycles a stream's batch buffers. Every batch but the last
// has the same size, and on the machines measured writing into memory
// already in use was many times faster than into fresh memory. It keeps at
// most keep free buffers: the queue's depth and the batches in hand.
type pixelBuffers struct {
	mu   sync.Mutex
	free [][]byte
	keep int
	mem  memory.Allocator // where buffers come from and go back to
	// closed: the stream is over; batches released later give their
	// buffers straight back to mem.
	closed bool
}

// close gives the kept buffers back to mem.
func (p *pixelBuffers) close() {
	p.mu.Lock()
	free := p.free
	p.free, p.closed = nil, true
	p.mu.Unlock()
	for _, b := range free {
		p.mem.Free(b)
	}
}

var _ memory.Allocator = (*pixelBuffers)(nil)

// Allocate implements memory.Allocator.
func (p *pixelBuffers) Allocate(n int) []byte {
	p.mu.Lock()
	for i, b := range p.free {
		if cap(b) >= n && cap(b) <= 2*n {
			p.free = append(p.free[:i], p.free[i+1:]...)
			p.mu.Unlock()
			return b[:n]
		}
	}
	p.mu.Unlock()
	return p.mem.Allocate(n)
}

// Reallocate implements memory.Allocator.
func (p *pixelBuffers) Reallocate(n int, b []byte) []byte {
	if n <= cap(b) {
		return b[:n]
	}
	out := p.Allocate(n)
	copy(out, b)
	p.Free(b)
	return out
}

// Free implements memory.Allocator.
func (p *pixelBuffers) Free(b []byte) {
	p.mu.Lock()
	if !p.closed && len(p.free) < p.keep {
		p.free = append(p.free, b[:cap(b)])
		b = nil
	}
	p.mu.Unlock()
	if b != nil {
		p.mem.Free(b)
	}
}
