package shard

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	acsv "github.com/apache/arrow-go/v18/arrow/csv"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// CSV options.
const (
	// OptDelimiter is the field delimiter, one character; default "," (tab
	// for files named *.tsv).
	OptDelimiter = "delimiter"
	// OptLazyQuotes "true" lets a quote appear in an unquoted field and a
	// lone quote in a quoted one (encoding/csv's LazyQuotes).
	OptLazyQuotes = "lazy_quotes"
	// OptHeader "false" means the file has no header row; columns are then
	// named f0, f1, ...
	OptHeader = "header"
)

// CSV reads delimited text with arrow-go's CSV reader. Inspect scans the file
// once, cutting it into blocks of about block_bytes at record boundaries
// (quoted fields may hold newlines) and counting rows; types are inferred
// from a sample at the file's start unless a schema is given. A UTF-8 BOM is
// stripped. Empty fields (and "NULL", "null") are null in non-string columns and
// text in string columns, as pyarrow does.
type CSV struct{}

// Name implements Format.
func (CSV) Name() string { return "csv" }

type csvState struct {
	textState
	comma rune
	lazy  bool
}

func csvComma(uri string, opts map[string]string) (rune, error) {
	d, ok := opts[OptDelimiter]
	if !ok {
		if strings.HasSuffix(strings.ToLower(uri), ".tsv") {
			return '\t', nil
		}
		return ',', nil
	}
	if d == `\t` {
		d = "\t"
	}
	r, n := utf8.DecodeRuneInString(d)
	if n != len(d) || r == utf8.RuneError || r == '"' || r == '\n' || r == '\r' {
		return 0, Invalidf("option delimiter=%q must be one character other than a quote or newline", d)
	}
	return r, nil
}

// Inspect implements Format.
func (CSV) Inspect(ctx context.Context, f File, info FileInfo, opts map[string]string) (*FileMeta, error) {
	return guard(info.URI, "header", func() (*FileMeta, error) {
		comma, err := csvComma(info.URI, opts)
		if err != nil {
			return nil, err
		}
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
		hasHeader := opts[OptHeader] != "false"
		st := &csvState{comma: comma, lazy: opts[OptLazyQuotes] == "true"}
		size := f.Size()
		start := int64(0)
		if head, err := readRange(f, info.URI, 0, min(3, size)); err != nil {
			return nil, err
		} else if bytes.Equal(head, utf8BOM) {
			start = 3
		}
		cut := blockCutter{target: blockBytes}
		sc := recordScanner{uri: info.URI, maxRec: maxRec, comma: byte(min(comma, 0x7f)), onRecord: func(s, e, line int64, _ []byte) error {
			if hasHeader && st.header == nil {
				raw, err := readRange(f, info.URI, s, e-s)
				if err != nil {
					return err
				}
				rec, err := csvRecords(raw, st, 1)
				if err != nil {
					return csvError(info.URI, line, err)
				}
				st.header = rec[0]
				st.dataStart = e
				return nil
			}
			cut.add(s, e, line)
			return nil
		}}
		if err := sc.scan(ctx, f, start, size); err != nil {
			return nil, err
		}
		st.lines = cut.lines
		var sc2 *arrow.Schema
		switch {
		case explicit != nil:
			if st.header != nil && len(st.header) != explicit.NumFields() {
				return nil, BadInput(info.URI, "line 1", fmt.Errorf("header has %d columns, the given schema %d", len(st.header), explicit.NumFields()))
			}
			sc2 = explicit
		default:
			sc2, err = csvInfer(f, info.URI, st, cut.blocks, inferBytes)
			if err != nil {
				return nil, err
			}
		}
		return &FileMeta{Info: info, Schema: sc2, Blocks: cut.blocks, State: st}, nil
	})
}

// csvNull reports whether v is read as null in a non-string column: arrow-go's
// defaults, "", "NULL" and "null". String columns keep them as text.
func csvNull(v string) bool { return slices.Contains(acsv.DefaultNullValues, v) }

// csvRecords parses up to n records (n < 0: all) of raw CSV.
func csvRecords(raw []byte, st *csvState, n int) ([][]string, error) {
	r := csv.NewReader(bytes.NewReader(raw))
	r.Comma, r.LazyQuotes = st.comma, st.lazy
	r.FieldsPerRecord = -1
	var out [][]string
	for n < 0 || len(out) < n {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// csvError names the file line of an encoding/csv error in a block that
// starts at line first.
func csvError(uri string, first int64, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return BadInput(uri, fmt.Sprintf("line %d", first+int64(pe.StartLine)-1), pe.Err)
	}
	return BadInput(uri, fmt.Sprintf("line %d", first), err)
}

// csvInfer infers column types from the records in the first inferBytes of
// the data. Each column takes the narrowest type every non-empty sample value
// parses as: int64, then float64, bool, date32, timestamp, else string.
func csvInfer(f File, uri string, st *csvState, blocks []Block, inferBytes int64) (*arrow.Schema, error) {
	var rows [][]string
	if len(blocks) > 0 {
		end := blocks[0].Offset
		for _, b := range blocks {
			if b.Offset-blocks[0].Offset >= inferBytes {
				break
			}
			end = b.Offset + b.Length
		}
		raw, err := readRange(f, uri, blocks[0].Offset, end-blocks[0].Offset)
		if err != nil {
			return nil, err
		}
		// Whole records only: the sample ends on a block boundary, and
		// inference stops after about inferBytes within it.
		r := csv.NewReader(bytes.NewReader(raw))
		r.Comma, r.FieldsPerRecord, r.LazyQuotes = st.comma, -1, st.lazy
		for {
			off := r.InputOffset()
			if off > inferBytes && len(rows) > 0 {
				break
			}
			rec, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, csvError(uri, st.lines[0], err)
			}
			rows = append(rows, rec)
		}
	}
	ncol := len(st.header)
	if st.header == nil && len(rows) > 0 {
		ncol = len(rows[0])
	}
	names := st.header
	if names == nil {
		for i := range ncol {
			names = append(names, fmt.Sprintf("f%d", i))
		}
	}
	fields := make([]arrow.Field, ncol)
	for i := range ncol {
		k := kindUnknown
		for _, r := range rows {
			if i < len(r) && !csvNull(r[i]) {
				k = widen(k, r[i])
			}
		}
		fields[i] = arrow.Field{Name: names[i], Type: k.arrowType(), Nullable: true}
	}
	return arrow.NewSchema(fields, nil), nil
}

// textKind is a step of the inference lattice.
type textKind int

const (
	kindUnknown textKind = iota // no non-empty value seen: string
	kindInt
	kindFloat
	kindBool
	kindDate
	kindTimestamp
	kindString
)

func (k textKind) arrowType() arrow.DataType {
	switch k {
	case kindInt:
		return arrow.PrimitiveTypes.Int64
	case kindFloat:
		return arrow.PrimitiveTypes.Float64
	case kindBool:
		return arrow.FixedWidthTypes.Boolean
	case kindDate:
		return arrow.FixedWidthTypes.Date32
	case kindTimestamp:
		return &arrow.TimestampType{Unit: arrow.Nanosecond}
	}
	return arrow.BinaryTypes.String
}

// parses reports whether v parses as kind k the way arrow-go's CSV reader
// parses it.
func (k textKind) parses(v string) bool {
	var err error
	switch k {
	case kindInt:
		_, err = strconv.ParseInt(v, 10, 64)
	case kindFloat:
		_, err = strconv.ParseFloat(v, 64)
	case kindBool:
		_, err = strconv.ParseBool(v)
	case kindDate:
		_, err = time.Parse("2006-01-02", v)
	case kindTimestamp:
		_, _, err = arrow.TimestampFromStringInLocation(v, arrow.Nanosecond, time.UTC)
	}
	return err == nil
}

// widen returns the narrowest kind both k's values and v parse as: int
// widens to float, date to timestamp, anything else to string.
func widen(k textKind, v string) textKind {
	switch {
	case k == kindUnknown:
		for k = kindInt; k < kindString && !k.parses(v); k++ {
		}
		return k
	case k.parses(v):
		return k
	case k == kindInt && kindFloat.parses(v):
		return kindFloat
	case k == kindDate && kindTimestamp.parses(v):
		return kindTimestamp
	}
	return kindString
}

// ReadBlock implements Format.
func (CSV) ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	st := meta.State.(*csvState)
	b := meta.Blocks[block]
	line := st.lines[block]
	where := fmt.Sprintf("lines %d.. (block %d, bytes %d..%d)", line, block, b.Offset, b.Offset+b.Length)
	return guard(meta.Info.URI, where, func() (arrow.RecordBatch, error) {
		raw, err := readRange(f, meta.Info.URI, b.Offset, b.Length)
		if err != nil {
			return nil, err
		}
		opts := []acsv.Option{
			acsv.WithComma(st.comma), acsv.WithHeader(false), acsv.WithChunk(-1),
			acsv.WithAllocator(mem), acsv.WithNullReader(false, acsv.DefaultNullValues...),
			acsv.WithLazyQuotes(st.lazy),
		}
		rec, err := readCSV(raw, meta.Schema, opts)
		if err != nil {
			return nil, csvLocate(meta.Info.URI, raw, st, meta.Schema, line, err)
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

func readCSV(raw []byte, sc *arrow.Schema, opts []acsv.Option) (rec arrow.RecordBatch, err error) {
	// arrow-go's reader panics on a record with more fields than the
	// schema; make it an error so csvLocate can name the line.
	defer func() {
		if p := recover(); p != nil {
			rec, err = nil, fmt.Errorf("reader panicked: %v", p)
		}
	}()
	r := acsv.NewReader(bytes.NewReader(raw), sc, opts...)
	defer r.Release()
	if !r.Next() {
		if err := r.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("no rows")
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	rec = r.RecordBatch()
	rec.Retain()
	return rec, nil
}

// csvLocate finds the record a failed block read stumbled on, so the error
// names its line and column: arrow-go's reader reports no position.
func csvLocate(uri string, raw []byte, st *csvState, sc *arrow.Schema, first int64, cause error) error {
	r := csv.NewReader(bytes.NewReader(raw))
	r.Comma, r.FieldsPerRecord, r.LazyQuotes = st.comma, sc.NumFields(), st.lazy
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return csvError(uri, first, err)
		}
		line, _ := r.FieldPos(0)
		for i, v := range rec {
			if csvNull(v) {
				continue
			}
			single := []acsv.Option{acsv.WithHeader(false), acsv.WithComma(','), acsv.WithNullReader(false, acsv.DefaultNullValues...)}
			field := sc.Field(i)
			one, err := readCSV([]byte(csvQuote(v)+"\n"), arrow.NewSchema([]arrow.Field{field}, nil), single)
			if err != nil {
				return BadInput(uri, fmt.Sprintf("line %d, column %q", first+int64(line)-1, field.Name),
					fmt.Errorf("cannot read %q as %s: %w", truncate(v, 64), field.Type, err))
			}
			one.Release()
		}
	}
	return BadInput(uri, fmt.Sprintf("lines %d..", first), cause)
}

func csvQuote(v string) string { return `"` + strings.ReplaceAll(v, `"`, `""`) + `"` }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

var _ Format = CSV{}
