package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/shard"
)

// GroupBy implements the GroupBy RPC. The whole dataset is read through the
// pipeline (rank 0 of 1, file order) and held as Arrow arrays while the
// groups are assembled, so it must fit in Options.GroupBytes; beyond that
// the call fails with a clear error rather than growing without bound.
func (v *service) GroupBy(req *feedv1.GroupByRequest, stream feedv1.Feed_GroupByServer) error {
	// A long read ends with the server too.
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	defer v.s.onStop(cancel)()
	spec := specFromProto(req.GetDataset())
	spec.Shuffle = nil
	ds, err := v.s.datasets.open(ctx, spec, v.s.log)
	if err != nil {
		return err
	}
	if len(ds.Schema().FieldIndices(req.GetKey())) == 0 {
		return shard.Invalidf("no column %q to group by", req.GetKey())
	}
	ps, err := v.s.whole(ctx, ds, spec, writeBatchRows)
	if err != nil {
		return err
	}
	defer ps.Close()
	var recs []arrow.RecordBatch
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	var held int64
	for {
		b, err := ps.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		recs = append(recs, b.Record)
		if held += recordBytes(b.Record); held > v.s.opts.GroupBytes {
			return fmt.Errorf("%w: grouping holds the whole dataset in memory, and it is over the %d-byte limit (select fewer columns)",
				shard.ErrUnsupported, v.s.opts.GroupBytes)
		}
	}
	all, err := concatRecords(ps.Schema(), recs)
	if err != nil {
		return err
	}
	defer all.Release()
	groups, err := shard.GroupBy(ctx, all, req.GetKey())
	if err != nil {
		return err
	}
	defer groups.Release()
	send := func(rec arrow.RecordBatch, i int) error {
		defer rec.Release()
		var buf bytes.Buffer
		w := ipc.NewWriter(&buf, ipc.WithSchema(rec.Schema()), ipc.WithAllocator(v.s.mem))
		if err := w.Write(rec); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return stream.Send(&feedv1.GroupByResponse{ArrowIpc: buf.Bytes(), Group: int64(i), NumGroups: int64(groups.Len())})
	}
	if req.GetCountOnly() {
		counts, err := groups.Counts(ctx, v.s.mem)
		if err != nil {
			return err
		}
		return send(counts, 0)
	}
	for i := range groups.Len() {
		g, err := groups.Group(ctx, i)
		if err != nil {
			return err
		}
		if err := send(g, i); err != nil {
			return err
		}
	}
	return nil
}

// concatRecords joins batches of one schema into one.
func concatRecords(sc *arrow.Schema, recs []arrow.RecordBatch) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, sc.NumFields())
	var rows int64
	for _, r := range recs {
		rows += r.NumRows()
	}
	for i := range cols {
		parts := make([]arrow.Array, 0, len(recs))
		for _, r := range recs {
			parts = append(parts, r.Column(i))
		}
		if len(parts) == 0 {
			cols[i] = array.MakeArrayOfNull(memory.DefaultAllocator, sc.Field(i).Type, 0)
			continue
		}
		c, err := array.Concatenate(parts, memory.DefaultAllocator)
		if err != nil {
			for _, c := range cols[:i] {
				c.Release()
			}
			return nil, err
		}
		cols[i] = c
	}
	rec := array.NewRecordBatch(sc, cols, rows)
	for _, c := range cols {
		c.Release()
	}
	return rec, nil
}

// recordBytes is the size of a batch's buffers.
func recordBytes(rec arrow.RecordBatch) int64 {
	var n int64
	var walk func(d arrow.ArrayData)
	walk = func(d arrow.ArrayData) {
		for _, b := range d.Buffers() {
			if b != nil {
				n += int64(b.Len())
			}
		}
		for _, c := range d.Children() {
			walk(c)
		}
	}
	for _, c := range rec.Columns() {
		walk(c.Data())
	}
	return n
}
