package shard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	acsv "github.com/apache/arrow-go/v18/arrow/csv"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// RecordWriter writes record batches of one schema into one file.
type RecordWriter interface {
	Write(rec arrow.RecordBatch) error
	// Close flushes the file's trailer; the underlying writer stays open.
	Close() error
}

// WriteFormats are the formats a dataset can be written as, by the
// extension of their files.
var WriteFormats = map[string]string{"parquet": "parquet", "csv": "csv", "json": "jsonl"}

// NewRecordWriter returns a writer of format (parquet, csv, json) over w.
// Parquet is written with pqarrow (snappy, with the Arrow schema stored, so
// extension and nested types come back as written); CSV with arrow-go's CSV
// writer (a header, nulls as empty fields; flat columns only); JSON as JSON
// Lines, one object per row.
func NewRecordWriter(format string, w io.Writer, sc *arrow.Schema) (RecordWriter, error) {
	switch format {
	case "parquet":
		props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Snappy),
			parquet.WithMaxRowGroupLength(64<<10))
		pw, err := pqarrow.NewFileWriter(sc, w, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
		if err != nil {
			return nil, fmt.Errorf("%w: parquet cannot hold this schema: %w", ErrUnsupported, err)
		}
		return pw, nil
	case "csv":
		for _, f := range sc.Fields() {
			if !flatType(f.Type) {
				return nil, fmt.Errorf("%w: column %q is %s, which CSV cannot hold (write parquet or json)", ErrUnsupported, f.Name, f.Type)
			}
		}
		cw := acsv.NewWriter(w, sc, acsv.WithHeader(true), acsv.WithNullWriter(""))
		return csvWriter{cw}, nil
	case "json":
		return &jsonWriter{w: bufio.NewWriterSize(w, 1<<20)}, nil
	}
	return nil, Invalidf("cannot write format %q (parquet, csv, json)", format)
}

func flatType(t arrow.DataType) bool {
	switch t.(type) {
	case arrow.NestedType, arrow.ExtensionType:
		return false
	}
	return true
}

type csvWriter struct{ w *acsv.Writer }

func (c csvWriter) Write(rec arrow.RecordBatch) error { return c.w.Write(rec) }
func (c csvWriter) Close() error                      { return c.w.Flush() }

type jsonWriter struct{ w *bufio.Writer }

// Write writes one object per row, keys in column order (arrow-go's
// RecordToJSON sorts them, which would reorder the columns read back).
func (j *jsonWriter) Write(rec arrow.RecordBatch) error {
	keys := make([][]byte, rec.NumCols())
	for c := range keys {
		k, _ := json.Marshal(rec.ColumnName(c)) // a string always marshals
		keys[c] = append(k, ':')
	}
	for r := range int(rec.NumRows()) {
		// A bufio.Writer keeps its first error and returns it from every
		// later call, so checking the last write of a row is enough.
		_ = j.w.WriteByte('{')
		for c, col := range rec.Columns() {
			if c > 0 {
				_ = j.w.WriteByte(',')
			}
			_, _ = j.w.Write(keys[c])
			v, err := json.Marshal(col.GetOneForMarshal(r))
			if err != nil {
				return fmt.Errorf("column %q row %d: %w", rec.ColumnName(c), r, err)
			}
			_, _ = j.w.Write(v)
		}
		if _, err := j.w.WriteString("}\n"); err != nil {
			return err
		}
	}
	return nil
}
func (j *jsonWriter) Close() error { return j.w.Flush() }

// Part is one output file being written: nothing is visible under its final
// name until Commit; Abort removes what was written.
type Part interface {
	io.Writer
	Commit() error
	Abort()
	// Name is the final URI of the file.
	Name() string
}

// Sink creates the files of one output directory.
type Sink interface {
	Create(ctx context.Context, name string) (Part, error)
	// Remove deletes a committed part, by the Name it had.
	Remove(ctx context.Context, name string) error
}

// Outputs opens output directories.
type Outputs interface {
	OpenDir(ctx context.Context, dir string) (Sink, error)
}

// OpenDir implements Outputs: dir must lie inside a data root once resolved
// through symlinks (its nearest existing ancestor is checked before anything
// is created). It is created when missing.
func (s *LocalStore) OpenDir(_ context.Context, dir string) (Sink, error) {
	if IsRemote(dir) {
		return nil, fmt.Errorf("%w: %s: writing to object stores is not supported yet", ErrUnsupported, dir)
	}
	if !filepath.IsAbs(dir) {
		return nil, Invalidf("output directory %q is not absolute", dir)
	}
	dir = filepath.Clean(dir)
	existing := dir
	for {
		if _, err := os.Lstat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if _, err := s.resolve(existing); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory %s: %w", dir, err)
	}
	res, err := s.resolve(dir)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(res); err != nil || !st.IsDir() {
		return nil, Invalidf("output %s is not a directory", dir)
	}
	return &dirSink{dir: dir, resolved: res}, nil
}

type dirSink struct{ dir, resolved string }

// Create implements Sink: the part is written as ".name.tmp-*" (hidden from
// listings) and renamed into place on Commit.
func (d *dirSink) Create(_ context.Context, name string) (Part, error) {
	if strings.ContainsRune(name, filepath.Separator) || strings.HasPrefix(name, ".") {
		return nil, Invalidf("bad output file name %q", name)
	}
	f, err := os.CreateTemp(d.resolved, "."+name+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.dir, err)
	}
	return &localPart{f: f, final: filepath.Join(d.resolved, name), name: filepath.Join(d.dir, name)}, nil
}

// Remove implements Sink, for files of this directory only.
func (d *dirSink) Remove(_ context.Context, name string) error {
	if filepath.Dir(name) != d.dir {
		return Invalidf("%s is not in %s", name, d.dir)
	}
	return os.Remove(filepath.Join(d.resolved, filepath.Base(name)))
}

type localPart struct {
	f     *os.File
	final string
	name  string
}

func (p *localPart) Write(b []byte) (int, error) { return p.f.Write(b) }
func (p *localPart) Name() string                { return p.name }

// Commit syncs the file and renames it into place: a reader sees the whole
// file or none.
func (p *localPart) Commit() error {
	err := errors.Join(p.f.Sync(), p.f.Close())
	if err == nil {
		err = os.Rename(p.f.Name(), p.final)
	}
	if err != nil {
		_ = os.Remove(p.f.Name())
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

func (p *localPart) Abort() {
	_ = p.f.Close()
	_ = os.Remove(p.f.Name())
}
