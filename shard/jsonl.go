package shard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// JSONLines reads JSON Lines with arrow-go's JSON reader: one JSON value per
// record, records separated by newlines (a value may span lines inside
// brackets). Inspect scans the file once, validating every record strictly
// (RFC 8259, so the JSON test suite's n_* files are rejected with their
// line), cutting blocks and counting rows. Types are inferred from a sample at
// the file's start unless a schema is given: ints widen to float, a key whose
// values disagree in type becomes a string column holding each value's JSON
// text, and keys first seen after the sample are dropped (raise infer_bytes
// or give a schema). A file of non-object values (arrays, scalars) reads as
// one column named "value".
type JSONLines struct{}

// Name implements Format.
func (JSONLines) Name() string { return "json" }

type jsonState struct {
	textState
	// wrap: records are not objects; each becomes {"value": record}.
	wrap bool
	// asText names the columns read as the JSON text of their values.
	asText map[string]bool
}

// Inspect implements Format.
func (JSONLines) Inspect(ctx context.Context, f File, info FileInfo, opts map[string]string) (*FileMeta, error) {
	return guard(info.URI, "line 1", func() (*FileMeta, error) {
		blockBytes, err := intOption(opts, OptBlockBytes, defaultBlockBytes)
		if err != nil {
			return nil, err
		}
		inferBytes, err := intOption(opts, OptInferBytes, defaultInferBytes)
		if err != nil {
			return nil, err
		}
		maxRec, err := intOption(opts, OptMaxRecordBytes, defaultMaxRecordBytes)
		if err != nil {
			return nil, err
		}
		explicit, err := schemaOption(opts)
		if err != nil {
			return nil, err
		}
		st := &jsonState{}
		size := f.Size()
		if head, err := readRange(f, info.URI, 0, min(3, size)); err != nil {
			return nil, err
		} else if bytes.Equal(head, utf8BOM) {
			st.dataStart = 3
		}
		cut := blockCutter{target: blockBytes}
		inf := jsonInferrer{}
		objects := 0 // 1: rows are objects, -1: they are not
		sc := recordScanner{json: true, keep: true, uri: info.URI, maxRec: maxRec,
			onRecord: func(s, e, line int64, rec []byte) error {
				if !json.Valid(rec) {
					return BadInput(info.URI, fmt.Sprintf("line %d", line), jsonSyntaxError(rec))
				}
				kind := -1
				if first := bytes.TrimLeft(rec, " \t\r\n"); len(first) > 0 && first[0] == '{' {
					kind = 1
				}
				if objects == 0 {
					objects = kind
				} else if kind != objects {
					return BadInput(info.URI, fmt.Sprintf("line %d", line),
						errors.New("records mix JSON objects and other values; each line must be an object (or none may be)"))
				}
				if explicit == nil && s-st.dataStart < inferBytes {
					if err := inf.add(rec, objects < 0); err != nil {
						return BadInput(info.URI, fmt.Sprintf("line %d", line), err)
					}
				}
				cut.add(s, e, line)
				return nil
			}}
		if err := sc.scan(ctx, f, st.dataStart, size); err != nil {
			return nil, err
		}
		if objects == 0 {
			// JSON Lines with no value at all is no JSON (the test suite's
			// n_structure_no_data); an empty partition is written as no file.
			return nil, BadInput(info.URI, "line 1", errors.New("the file holds no JSON value"))
		}
		st.lines, st.wrap = cut.lines, objects < 0
		schema := explicit
		if schema == nil {
			schema, st.asText = inf.schema()
		}
		return &FileMeta{Info: info, Schema: schema, Blocks: cut.blocks, State: st}, nil
	})
}

// jsonSyntaxError explains why rec is not valid JSON.
func jsonSyntaxError(rec []byte) error {
	var v any
	err := json.Unmarshal(rec, &v)
	if err == nil {
		return errors.New("invalid JSON")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d of the record: %w", se.Offset, se)
	}
	return err
}

// ReadBlock implements Format.
func (JSONLines) ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	st := meta.State.(*jsonState)
	b := meta.Blocks[block]
	line := st.lines[block]
	where := fmt.Sprintf("lines %d.. (block %d, bytes %d..%d)", line, block, b.Offset, b.Offset+b.Length)
	return guard(meta.Info.URI, where, func() (arrow.RecordBatch, error) {
		raw, err := readRange(f, meta.Info.URI, b.Offset, b.Length)
		if err != nil {
			return nil, err
		}
		var rec arrow.RecordBatch
		if !st.wrap && len(st.asText) == 0 {
			rec, err = readJSON(ctx, raw, meta.Schema, mem)
		}
		if rec == nil {
			// The slow path: normalize every record (wrap non-objects, turn
			// mixed-type values into text, let the last duplicate key win),
			// and when even that fails, find the record and its line.
			norm, nerr := normalizeJSON(ctx, raw, st)
			if nerr == nil {
				rec, err = readJSON(ctx, norm, meta.Schema, mem)
			}
			if rec == nil {
				return nil, jsonLocate(ctx, meta.Info.URI, raw, st, meta.Schema, line, errors.Join(err, nerr))
			}
		}
		if err := checkUTF8(meta.Info.URI, line, rec); err != nil {
			rec.Release()
			return nil, err
		}
		if rec.NumRows() != b.Rows {
			rec.Release()
			return nil, BadInput(meta.Info.URI, where, fmt.Errorf("block holds %d rows, %d when inspected", rec.NumRows(), b.Rows))
		}
		return reorder(rec, columns)
	})
}

func readJSON(ctx context.Context, raw []byte, sc *arrow.Schema, mem memory.Allocator) (arrow.RecordBatch, error) {
	// arrow-go's reader (goccy's stream decoder under it) slows down more
	// than linearly with its input: feed it pieces of about 256 KiB, cut at
	// record boundaries, and join the batches.
	const piece = 256 << 10
	var cuts []int
	start := 0
	sc2 := recordScanner{json: true, maxRec: int64(len(raw)) + 1, onRecord: func(_, e, _ int64, _ []byte) error {
		if int(e)-start >= piece {
			cuts = append(cuts, int(e))
			start = int(e)
		}
		return nil
	}}
	if err := sc2.scan(ctx, bytes.NewReader(raw), 0, int64(len(raw))); err != nil {
		return nil, err
	}
	if start < len(raw) {
		cuts = append(cuts, len(raw))
	}
	var recs []arrow.RecordBatch
	defer func() {
		for _, rec := range recs {
			rec.Release()
		}
	}()
	prev := 0
	for _, c := range cuts {
		r := array.NewJSONReader(bytes.NewReader(raw[prev:c]), sc, array.WithChunk(-1), array.WithAllocator(mem))
		for r.Next() {
			rec := r.RecordBatch()
			rec.Retain()
			recs = append(recs, rec)
		}
		err := r.Err()
		r.Release()
		if err != nil {
			return nil, err
		}
		prev = c
	}
	if len(recs) == 0 {
		return nil, errors.New("no rows")
	}
	if len(recs) == 1 {
		recs[0].Retain()
		return recs[0], nil
	}
	return concatBatches(sc, recs, mem)
}

// concatBatches joins batches of one schema into one.
func concatBatches(sc *arrow.Schema, recs []arrow.RecordBatch, mem memory.Allocator) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, sc.NumFields())
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	var rows int64
	for _, r := range recs {
		rows += r.NumRows()
	}
	for i := range cols {
		parts := make([]arrow.Array, len(recs))
		for j, r := range recs {
			parts[j] = r.Column(i)
		}
		c, err := array.Concatenate(parts, mem)
		if err != nil {
			return nil, err
		}
		cols[i] = c
	}
	return array.NewRecordBatch(sc, cols, rows), nil
}

// eachRecord calls fn for every record of a block with its line offset
// within the block (0 for the first).
func eachRecord(ctx context.Context, raw []byte, fn func(rec []byte, line int64) error) error {
	sc := recordScanner{json: true, keep: true, maxRec: int64(len(raw)) + 1,
		onRecord: func(_, _, line int64, rec []byte) error { return fn(rec, line-1) }}
	return sc.scan(ctx, bytes.NewReader(raw), 0, int64(len(raw)))
}

func normalizeJSON(ctx context.Context, raw []byte, st *jsonState) ([]byte, error) {
	var out bytes.Buffer
	err := eachRecord(ctx, raw, func(rec []byte, _ int64) error {
		b, err := normalizeRecord(rec, st)
		if err != nil {
			return err
		}
		out.Write(b)
		out.WriteByte('\n')
		return nil
	})
	return out.Bytes(), err
}

func normalizeRecord(rec []byte, st *jsonState) ([]byte, error) {
	if st.wrap {
		rec = append(append([]byte(`{"value":`), bytes.TrimSpace(rec)...), '}')
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(rec, &m); err != nil {
		return nil, err
	}
	for k := range st.asText {
		if v, ok := m[k]; ok && string(v) != "null" {
			var buf bytes.Buffer
			if err := json.Compact(&buf, v); err != nil {
				return nil, err
			}
			s, _ := json.Marshal(buf.String()) // a string always marshals
			m[k] = s
		}
	}
	return json.Marshal(m)
}

// jsonLocate names the first record of a block that cannot be read into the
// schema: arrow-go's reader reports no position.
func jsonLocate(ctx context.Context, uri string, raw []byte, st *jsonState, sc *arrow.Schema, first int64, cause error) error {
	var found error
	_ = eachRecord(ctx, raw, func(rec []byte, off int64) error {
		where := fmt.Sprintf("line %d", first+off)
		norm, err := normalizeRecord(rec, st)
		if err == nil {
			var r arrow.RecordBatch
			if r, err = readJSON(ctx, norm, sc, memory.DefaultAllocator); err == nil {
				r.Release()
				return nil
			}
		}
		found = BadInput(uri, where, fmt.Errorf("record does not fit the schema (%s): %w", sc, err))
		return found
	})
	if found != nil {
		return found
	}
	return BadInput(uri, fmt.Sprintf("lines %d..", first), cause)
}

// jsonType is an inferred JSON type: a lattice from unknown (only nulls
// seen) through int ⊂ float, bool, string, list, struct, to text (values
// disagree: keep the JSON text).
type jsonType struct {
	kind   int
	elem   *jsonType            // list
	names  []string             // struct fields in first-seen order
	fields map[string]*jsonType // struct
}

const (
	jUnknown = iota
	jInt
	jFloat
	jBool
	jString
	jList
	jStruct
	jText
)

func typeOf(v any) *jsonType {
	switch v := v.(type) {
	case nil:
		return &jsonType{kind: jUnknown}
	case bool:
		return &jsonType{kind: jBool}
	case json.Number:
		if _, err := v.Int64(); err == nil {
			return &jsonType{kind: jInt}
		}
		return &jsonType{kind: jFloat}
	case string:
		return &jsonType{kind: jString}
	case []any:
		t := &jsonType{kind: jList, elem: &jsonType{kind: jUnknown}}
		for _, e := range v {
			t.elem = merge(t.elem, typeOf(e))
		}
		return t
	case map[string]any:
		t := &jsonType{kind: jStruct, fields: map[string]*jsonType{}}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys) // Go maps lose the order; sorted is at least stable
		for _, k := range keys {
			t.names = append(t.names, k)
			t.fields[k] = typeOf(v[k])
		}
		return t
	}
	return &jsonType{kind: jText}
}

func merge(a, b *jsonType) *jsonType {
	switch {
	case a.kind == jUnknown:
		return b
	case b.kind == jUnknown:
		return a
	case a.kind == jInt && b.kind == jFloat, a.kind == jFloat && b.kind == jInt:
		return &jsonType{kind: jFloat}
	case a.kind != b.kind:
		return &jsonType{kind: jText}
	case a.kind == jList:
		return &jsonType{kind: jList, elem: merge(a.elem, b.elem)}
	case a.kind == jStruct:
		t := &jsonType{kind: jStruct, names: slices.Clone(a.names), fields: map[string]*jsonType{}}
		for k, v := range a.fields {
			t.fields[k] = v
		}
		for _, k := range b.names {
			if old, ok := t.fields[k]; ok {
				t.fields[k] = merge(old, b.fields[k])
			} else {
				t.names = append(t.names, k)
				t.fields[k] = b.fields[k]
			}
		}
		return t
	}
	return a
}

// hasText reports whether a text (mixed) type lies anywhere inside t.
func (t *jsonType) hasText() bool {
	switch t.kind {
	case jText:
		return true
	case jList:
		return t.elem.hasText()
	case jStruct:
		for _, f := range t.fields {
			if f.hasText() {
				return true
			}
		}
	}
	return false
}

func (t *jsonType) arrow() arrow.DataType {
	switch t.kind {
	case jInt:
		return arrow.PrimitiveTypes.Int64
	case jFloat:
		return arrow.PrimitiveTypes.Float64
	case jBool:
		return arrow.FixedWidthTypes.Boolean
	case jList:
		return arrow.ListOf(t.elem.arrow())
	case jStruct:
		fs := make([]arrow.Field, len(t.names))
		for i, n := range t.names {
			fs[i] = arrow.Field{Name: n, Type: t.fields[n].arrow(), Nullable: true}
		}
		return arrow.StructOf(fs...)
	}
	// Unknown (nulls only) is read as string, so later values fit.
	return arrow.BinaryTypes.String
}

// jsonInferrer merges the types of the sample's records. Top-level keys keep
// the order they are first seen in.
type jsonInferrer struct {
	names []string
	types map[string]*jsonType
}

func (in *jsonInferrer) add(rec []byte, wrap bool) error {
	dec := json.NewDecoder(bytes.NewReader(rec))
	dec.UseNumber()
	if wrap {
		var v any
		if err := dec.Decode(&v); err != nil {
			return err
		}
		in.merge("value", typeOf(v))
		return nil
	}
	// Decode the top level token by token to keep the keys' order.
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return err
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return err
		}
		in.merge(k.(string), typeOf(v))
	}
	return nil
}

func (in *jsonInferrer) merge(k string, t *jsonType) {
	if in.types == nil {
		in.types = map[string]*jsonType{}
	}
	if old, ok := in.types[k]; ok {
		in.types[k] = merge(old, t)
		return
	}
	in.names = append(in.names, k)
	in.types[k] = t
}

func (in *jsonInferrer) schema() (*arrow.Schema, map[string]bool) {
	fields := make([]arrow.Field, len(in.names))
	var asText map[string]bool
	for i, n := range in.names {
		t := in.types[n]
		if t.hasText() {
			if asText == nil {
				asText = map[string]bool{}
			}
			asText[n] = true
			t = &jsonType{kind: jString}
		}
		fields[i] = arrow.Field{Name: n, Type: t.arrow(), Nullable: true}
	}
	return arrow.NewSchema(fields, nil), asText
}

var _ Format = JSONLines{}
