package shard

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	acsv "github.com/apache/arrow-go/v18/arrow/csv"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// The conformance suite: every Format reads the same generated table, split
// into many blocks, and must give back exactly its rows, in order, with
// projection and concurrent block reads; damaged copies must give an
// InputError that names the file.

// tricky strings exercise quoting: delimiters, quotes, newlines, UTF-8, empty.
var tricky = []string{"plain", "with,comma", `with "quotes"`, "multi\nline", "héllo ✓ 日本語", "", "tab\there", `{"json": [1, 2]}`}

const confRows = 3000

// confTable is the generated table: id int64, x float64 (some nulls), s
// string, flag bool.
func confTable(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	sc := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "x", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "flag", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
	}, nil)
	b := array.NewRecordBuilder(mem, sc)
	defer b.Release()
	for i := range confRows {
		b.Field(0).(*array.Int64Builder).Append(int64(i) * 7919)
		if i%13 == 5 {
			b.Field(1).AppendNull()
		} else {
			b.Field(1).(*array.Float64Builder).Append(float64(i) / 8)
		}
		b.Field(2).(*array.StringBuilder).Append(tricky[i%len(tricky)])
		b.Field(3).(*array.BooleanBuilder).Append(i%3 == 0)
	}
	return b.NewRecordBatch()
}

type confCase struct {
	format string
	ext    string
	opts   map[string]string
	// write writes the table to path and returns the rows expected back
	// (the table itself, or what the format can hold of it).
	write func(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch
}

func confCases() []confCase {
	small := map[string]string{OptBlockBytes: "8192"}
	return []confCase{
		{format: "parquet", ext: ".parquet", write: writeParquetFile},
		{format: "csv", ext: ".csv", opts: small, write: writeCSVFile},
		{format: "json", ext: ".jsonl", opts: small, write: writeJSONFile},
		{format: "numpy", ext: ".npy", opts: small, write: writeNpyFile},
		{format: "numpy", ext: ".npz", opts: small, write: writeNpzFile},
	}
}

func writeParquetFile(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := pqarrow.NewFileWriter(rec.Schema(), f, parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(700)), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rec.Retain()
	return rec
}

func writeCSVFile(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch {
	var buf bytes.Buffer
	buf.Write(utf8BOM) // a BOM must be stripped
	w := acsv.NewWriter(&buf, rec.Schema(), acsv.WithHeader(true), acsv.WithCRLF(true))
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	rec.Retain()
	return rec
}

func writeJSONFile(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch {
	var buf bytes.Buffer
	for r := range int(rec.NumRows()) {
		// Keys in a different order per row, and a multi-line value now and
		// then: neither may matter.
		parts := []string{}
		for c := range int(rec.NumCols()) {
			v, _ := json.Marshal(rec.Column(c).GetOneForMarshal(r))
			parts = append(parts, fmt.Sprintf("%q:%s", rec.ColumnName(c), v))
		}
		if r%2 == 1 {
			parts[0], parts[3] = parts[3], parts[0]
		}
		sep := ","
		if r%50 == 7 {
			sep = ",\n  "
		}
		buf.WriteString("{" + strings.Join(parts, sep) + "}\n")
		if r%100 == 3 {
			buf.WriteString("\n  \n") // blank lines are skipped
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	rec.Retain()
	return rec
}

// npyBytes encodes a little-endian C-order array.
func npyBytes(descr string, shape []int, data []byte) []byte {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	sh := strings.Join(dims, ", ")
	if len(shape) == 1 {
		sh += ","
	}
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh)
	for (10+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	var out bytes.Buffer
	out.WriteString("\x93NUMPY\x01\x00")
	_ = binary.Write(&out, binary.LittleEndian, uint16(len(h)))
	out.WriteString(h)
	out.Write(data)
	return out.Bytes()
}

// npyTable: the numeric columns of the table; "data" is id, plus an (N, 2, 2)
// float32 column "v" for .npz.
func npyColumns(rec arrow.RecordBatch, mem memory.Allocator) (ids []byte, vs []byte, expect arrow.RecordBatch) {
	n := int(rec.NumRows())
	idc := rec.Column(0).(*array.Int64)
	ib := array.NewInt64Builder(mem)
	defer ib.Release()
	fb := array.NewFixedSizeListBuilder(mem, 2, arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32))
	defer fb.Release()
	for i := range n {
		ids = binary.LittleEndian.AppendUint64(ids, uint64(idc.Value(i)))
		ib.Append(idc.Value(i))
		fb.Append(true)
		inner := fb.ValueBuilder().(*array.FixedSizeListBuilder)
		for j := range 2 {
			inner.Append(true)
			for k := range 2 {
				v := float32(i*4 + j*2 + k)
				vs = binary.LittleEndian.AppendUint32(vs, mathFloat32bits(v))
				inner.ValueBuilder().(*array.Float32Builder).Append(v)
			}
		}
	}
	a, b := ib.NewArray(), fb.NewArray()
	defer a.Release()
	defer b.Release()
	sc := arrow.NewSchema([]arrow.Field{{Name: "data", Type: a.DataType()}, {Name: "v", Type: b.DataType()}}, nil)
	return ids, vs, array.NewRecordBatch(sc, []arrow.Array{a, b}, int64(n))
}

func writeNpyFile(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch {
	ids, _, exp := npyColumns(rec, memory.DefaultAllocator)
	defer exp.Release()
	if err := os.WriteFile(path, npyBytes("<i8", []int{int(rec.NumRows())}, ids), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := reorder(exp, []string{"data"})
	exp.Retain()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeNpzFile(t testing.TB, path string, rec arrow.RecordBatch) arrow.RecordBatch {
	ids, vs, exp := npyColumns(rec, memory.DefaultAllocator)
	n := int(rec.NumRows())
	writeZip(t, path, map[string][]byte{
		"data.npy": npyBytes("<i8", []int{n}, ids),
		"v.npy":    npyBytes("<f4", []int{n, 2, 2}, vs),
	}, []string{"data.npy", "v.npy"}, true)
	return exp
}

func openOne(t testing.TB, uri, format string, opts map[string]string, columns []string) (*Dataset, error) {
	store, err := NewLocalStore([]string{filepath.Dir(uri)})
	if err != nil {
		t.Fatal(err)
	}
	return Open(context.Background(), Spec{Format: format, URIs: []string{uri}, Options: opts, Columns: columns},
		OpenOptions{Store: store, Formats: DefaultFormats()})
}

// readDataset reads every block, concurrently, and returns them in order.
func readDataset(ds *Dataset, mem memory.Allocator) ([]arrow.RecordBatch, error) {
	recs := make([]arrow.RecordBatch, len(ds.Blocks))
	errs := make([]error, len(ds.Blocks))
	var wg sync.WaitGroup
	for i := range ds.Blocks {
		wg.Go(func() { recs[i], errs[i] = ds.ReadBlock(context.Background(), i, mem) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, r := range recs {
			if r != nil {
				r.Release()
			}
		}
		return nil, err
	}
	return recs, nil
}

// sameRows checks that blocks hold exactly want's rows, named columns in order.
func sameRows(t testing.TB, want arrow.RecordBatch, got []arrow.RecordBatch, columns []string) {
	t.Helper()
	var n int64
	for _, g := range got {
		n += g.NumRows()
	}
	if n != want.NumRows() {
		t.Fatalf("read %d rows, want %d", n, want.NumRows())
	}
	if columns == nil {
		columns = fieldNamesOf(want.Schema())
	}
	for ci, name := range columns {
		wcol := want.Column(want.Schema().FieldIndices(name)[0])
		var parts []arrow.Array
		for _, g := range got {
			if g.ColumnName(ci) != name {
				t.Fatalf("column %d is %q, want %q", ci, g.ColumnName(ci), name)
			}
			parts = append(parts, g.Column(ci))
		}
		all, err := array.Concatenate(parts, memory.DefaultAllocator)
		if err != nil {
			t.Fatal(err)
		}
		if !array.Equal(all, wcol) {
			for r := range all.Len() {
				if all.ValueStr(r) != wcol.ValueStr(r) {
					t.Fatalf("column %s row %d: got %q, want %q", name, r, all.ValueStr(r), wcol.ValueStr(r))
				}
			}
			t.Fatalf("column %s differs: got %s, want %s", name, all.DataType(), wcol.DataType())
		}
		all.Release()
	}
}

func TestConformance(t *testing.T) {
	for _, c := range confCases() {
		t.Run(c.format+c.ext, func(t *testing.T) {
			mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
			defer mem.AssertSize(t, 0)
			table := confTable(t, mem)
			defer table.Release()
			dir := t.TempDir()
			path := filepath.Join(dir, "data"+c.ext)
			want := c.write(t, path, table)
			defer want.Release()

			ds, err := openOne(t, path, c.format, c.opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ds.Rows != want.NumRows() {
				t.Fatalf("inspected %d rows, want %d", ds.Rows, want.NumRows())
			}
			if len(ds.Blocks) < 3 {
				t.Fatalf("%d blocks: the file did not split", len(ds.Blocks))
			}
			if !sameTypes(ds.Schema(), want.Schema()) {
				t.Fatalf("schema\n%s\nwant\n%s", ds.Schema(), want.Schema())
			}
			recs, err := readDataset(ds, mem)
			if err != nil {
				t.Fatal(err)
			}
			sameRows(t, want, recs, nil)
			releaseAll(recs)

			// Projection: a subset in another order.
			names := fieldNamesOf(want.Schema())
			cols := []string{names[len(names)-1], names[0]}
			if len(names) == 1 {
				cols = names
			}
			ds, err = openOne(t, path, c.format, c.opts, cols)
			if err != nil {
				t.Fatal(err)
			}
			recs, err = readDataset(ds, mem)
			if err != nil {
				t.Fatal(err)
			}
			sameRows(t, want, recs, cols)
			releaseAll(recs)

			// Damage: the file cut short after it was inspected must give an
			// InputError naming the file, never a panic or short rows.
			ds, err = openOne(t, path, c.format, c.opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(path)
			if err := os.Truncate(path, st.Size()*2/3); err != nil {
				t.Fatal(err)
			}
			recs, err = readDataset(ds, mem)
			if err == nil {
				releaseAll(recs)
				t.Fatal("reading a truncated file succeeded")
			}
			var ie *InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), path) {
				t.Fatalf("want an InputError naming %s, got %v", path, err)
			}
		})
	}
}

func releaseAll(recs []arrow.RecordBatch) {
	for _, r := range recs {
		r.Release()
	}
}

func mathFloat32bits(f float32) uint32 { return math.Float32bits(f) }

// writeZip writes members in order, stored (uncompressed) or deflated.
func writeZip(t testing.TB, path string, members map[string][]byte, order []string, stored bool) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, name := range order {
		method := zip.Deflate
		if stored {
			method = zip.Store
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(members[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fieldNamesOf(sc *arrow.Schema) []string {
	var out []string
	for _, f := range sc.Fields() {
		out = append(out, f.Name)
	}
	return out
}

// sameTypes compares names and types, not nullability or metadata.
func sameTypes(a, b *arrow.Schema) bool {
	if a.NumFields() != b.NumFields() {
		return false
	}
	for i := range a.NumFields() {
		if a.Field(i).Name != b.Field(i).Name || a.Field(i).Type.String() != b.Field(i).Type.String() {
			return false
		}
	}
	return true
}
