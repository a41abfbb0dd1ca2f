package shard

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Project returns the schema of the named top-level columns, in that order
// (nil: the whole schema).
func Project(sc *arrow.Schema, columns []string) (*arrow.Schema, error) {
	if columns == nil {
		return sc, nil
	}
	fields := make([]arrow.Field, 0, len(columns))
	for _, c := range columns {
		idx := sc.FieldIndices(c)
		if len(idx) == 0 {
			return nil, Invalidf("no column %q (columns: %s)", c, fieldNames(sc))
		}
		fields = append(fields, sc.Field(idx[0]))
	}
	md := sc.Metadata()
	return arrow.NewSchema(fields, &md), nil
}

func fieldNames(sc *arrow.Schema) string {
	s := ""
	for i, f := range sc.Fields() {
		if i > 0 {
			s += ", "
		}
		s += f.Name
	}
	return s
}

// reorder returns rec's columns in the named order, releasing rec. Readers may
// return columns in file order; callers asked for theirs.
func reorder(rec arrow.RecordBatch, columns []string) (arrow.RecordBatch, error) {
	if columns == nil {
		return rec, nil
	}
	defer rec.Release()
	sc := rec.Schema()
	fields := make([]arrow.Field, len(columns))
	cols := make([]arrow.Array, len(columns))
	for i, c := range columns {
		idx := sc.FieldIndices(c)
		if len(idx) == 0 {
			return nil, fmt.Errorf("%w: reader returned no column %q", ErrInvalid, c)
		}
		fields[i] = sc.Field(idx[0])
		cols[i] = rec.Column(idx[0])
	}
	md := sc.Metadata()
	return array.NewRecordBatch(arrow.NewSchema(fields, &md), cols, rec.NumRows()), nil
}

// emptyBatch returns a record batch with no rows.
func emptyBatch(sc *arrow.Schema, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	p, err := Project(sc, columns)
	if err != nil {
		return nil, err
	}
	cols := make([]arrow.Array, p.NumFields())
	for i, f := range p.Fields() {
		cols[i] = array.MakeArrayOfNull(mem, f.Type, 0)
	}
	rec := array.NewRecordBatch(p, cols, 0)
	for _, c := range cols {
		c.Release()
	}
	return rec, nil
}

// RecordBytes is the size of the buffers a record batch refers to, each
// counted once (a slice counts the whole buffers it shares).
func RecordBytes(rec arrow.RecordBatch) int64 {
	seen := map[*memory.Buffer]struct{}{}
	var n int64
	var walk func(d arrow.ArrayData)
	walk = func(d arrow.ArrayData) {
		if d == nil {
			return
		}
		if ad, ok := d.(*array.Data); ok && ad == nil {
			return // a typed nil: Dictionary() of a plain array
		}
		for _, b := range d.Buffers() {
			if b == nil {
				continue
			}
			if _, ok := seen[b]; !ok {
				seen[b] = struct{}{}
				n += int64(b.Len())
			}
		}
		for _, c := range d.Children() {
			walk(c)
		}
		walk(d.Dictionary())
	}
	for _, c := range rec.Columns() {
		walk(c.Data())
	}
	return n
}
