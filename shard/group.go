package shard

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/compute"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Groups are the rows of a record batch grouped by one key column, with
// Arrow's compute kernels: a stable sort of the key, then runs of equal keys.
// Groups come in ascending key order (nulls last, as one group); rows keep
// their order within a group.
type Groups struct {
	rec    arrow.RecordBatch
	key    int
	order  arrow.Array // row indices sorted by key (Int64 or Uint64)
	starts []int       // run starts in order, plus the end
}

// GroupBy groups rec (retained until Release) by the named column.
func GroupBy(ctx context.Context, rec arrow.RecordBatch, key string) (*Groups, error) {
	idx := rec.Schema().FieldIndices(key)
	if len(idx) == 0 {
		return nil, Invalidf("no column %q to group by (columns: %s)", key, fieldNames(rec.Schema()))
	}
	col := rec.Column(idx[0])
	order, err := compute.SortIndicesArray(ctx, col, compute.DefaultSortKey())
	if err != nil {
		return nil, fmt.Errorf("%w: cannot group by %q of type %s: %w", ErrUnsupported, key, col.DataType(), err)
	}
	sorted, err := compute.TakeArray(ctx, col, order)
	if err != nil {
		order.Release()
		return nil, err
	}
	defer sorted.Release()
	g := &Groups{rec: rec, key: idx[0], order: order}
	for i := 0; i < sorted.Len(); i++ {
		if i == 0 || !array.SliceEqual(sorted, int64(i-1), int64(i), sorted, int64(i), int64(i+1)) {
			g.starts = append(g.starts, i)
		}
	}
	g.starts = append(g.starts, sorted.Len())
	rec.Retain()
	return g, nil
}

// Len is the number of groups.
func (g *Groups) Len() int { return len(g.starts) - 1 }

// Group returns group i's rows; the caller releases it.
func (g *Groups) Group(ctx context.Context, i int) (arrow.RecordBatch, error) {
	ids := array.NewSlice(g.order, int64(g.starts[i]), int64(g.starts[i+1]))
	defer ids.Release()
	return takeRows(ctx, g.rec, ids)
}

// Counts returns one row per group: the key (named as in the input) and
// "count" (int64), in key order.
func (g *Groups) Counts(ctx context.Context, mem memory.Allocator) (arrow.RecordBatch, error) {
	firsts := array.NewInt64Builder(mem)
	defer firsts.Release()
	counts := array.NewInt64Builder(mem)
	defer counts.Release()
	for i := 0; i < g.Len(); i++ {
		firsts.Append(int64(g.starts[i]))
		counts.Append(int64(g.starts[i+1] - g.starts[i]))
	}
	at, cnt := firsts.NewArray(), counts.NewArray()
	defer at.Release()
	defer cnt.Release()
	rows, err := compute.TakeArray(ctx, g.order, at)
	if err != nil {
		return nil, err
	}
	defer rows.Release()
	keys, err := compute.TakeArray(ctx, g.rec.Column(g.key), rows)
	if err != nil {
		return nil, err
	}
	defer keys.Release()
	sc := arrow.NewSchema([]arrow.Field{g.rec.Schema().Field(g.key), {Name: "count", Type: arrow.PrimitiveTypes.Int64}}, nil)
	return array.NewRecordBatch(sc, []arrow.Array{keys, cnt}, int64(g.Len())), nil
}

// Release frees the groups and the batch they hold.
func (g *Groups) Release() {
	g.order.Release()
	g.rec.Release()
}

func takeRows(ctx context.Context, rec arrow.RecordBatch, ids arrow.Array) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, rec.NumCols())
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	for i, c := range rec.Columns() {
		var err error
		if cols[i], err = compute.TakeArray(ctx, c, ids); err != nil {
			return nil, err
		}
	}
	return array.NewRecordBatch(rec.Schema(), cols, int64(ids.Len())), nil
}
