package shard

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/tests/corpora"
)

// readAll opens one file as a dataset and reads every block, returning the
// rows read or the first error.
func readAll(t *testing.T, store Store, uri string, spec Spec, mem memory.Allocator) (int64, error) {
	t.Helper()
	spec.Format, spec.URIs = "parquet", []string{uri}
	ds, err := Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()})
	if err != nil {
		return 0, err
	}
	var rows int64
	for i := range ds.Blocks {
		rec, err := ds.ReadBlock(context.Background(), i, mem)
		if err != nil {
			return rows, err
		}
		rows += rec.NumRows()
		rec.Release()
	}
	if rows != ds.Rows {
		return rows, fmt.Errorf("read %d rows, metadata says %d", rows, ds.Rows)
	}
	return rows, nil
}

// Every Parquet file in the corpora: the ones arrow-go reads give the expected
// row counts; every other one gives an InputError that names it, and no panic
// escapes (unknown-logical-type.parquet panics inside arrow-go).
func TestParquetCorpora(t *testing.T) {
	root := corpora.Path(t, "parquet")
	store, err := NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	rows := corpora.Expectations(t, "parquet", "EXPECTATIONS.tsv")
	if len(rows) < 70 {
		t.Fatalf("only %d expectations", len(rows))
	}
	for _, row := range rows {
		name, result := row[0], row[2]
		t.Run(name, func(t *testing.T) {
			uri := filepath.Join(root, name)
			// The Go allocator: arrow-go itself leaks small buffers on delta
			// encodings and failure paths, which only the GC can reclaim.
			n, err := readAll(t, store, uri, Spec{}, memory.DefaultAllocator)
			if strings.HasPrefix(result, "OK") {
				if err != nil {
					t.Fatalf("want %s, got %v", result, err)
				}
				var want int64
				if _, err := fmt.Sscanf(result[strings.Index(result, "rows="):], "rows=%d", &want); err != nil {
					t.Fatalf("expectation %q: %v", result, err)
				}
				if n != want {
					t.Fatalf("read %d rows, want %d", n, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error (%s), read %d rows", result, n)
			}
			var ie *InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), uri) {
				t.Fatalf("error does not name the file: %v", err)
			}
			if !errors.Is(err, ErrBadInput) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error is not classed as bad input: %v", err)
			}
		})
	}
}

// Our own paths release every buffer they take.
func TestParquetNoLeaks(t *testing.T) {
	root := corpora.Path(t, "parquet")
	store, _ := NewLocalStore([]string{root})
	for _, name := range []string{"derived/derived_zipcodes_snappy_rg8192.parquet", "derived/derived_birdstrikes_zstd_rg8192.parquet", "valid/alltypes_plain.parquet"} {
		mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
		if _, err := readAll(t, store, filepath.Join(root, name), Spec{}, mem); err != nil {
			t.Fatal(err)
		}
		mem.AssertSize(t, 0)
	}
}

func TestParquetColumnsAndSkip(t *testing.T) {
	root := corpora.Path(t, "parquet")
	store, _ := NewLocalStore([]string{root})
	ctx := context.Background()
	ds, err := Open(ctx, Spec{Format: "parquet", Columns: []string{"zip_code", "latitude"},
		URIs: []string{root + "/derived/derived_zipcodes_snappy_rg8192.parquet"}},
		OpenOptions{Store: store, Formats: DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	if got := fieldNames(ds.Schema()); got != "zip_code, latitude" {
		t.Fatalf("columns %q", got)
	}
	if ds.Rows != 42049 || len(ds.Blocks) != 6 {
		t.Fatalf("%d rows in %d blocks", ds.Rows, len(ds.Blocks))
	}
	rec, err := ds.ReadBlock(ctx, 5, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()
	if rec.NumCols() != 2 || rec.ColumnName(0) != "zip_code" {
		t.Fatalf("block schema %s", rec.Schema())
	}

	_, err = Open(ctx, Spec{Format: "parquet", Columns: []string{"nope"},
		URIs: []string{root + "/derived/derived_zipcodes_snappy_rg8192.parquet"}},
		OpenOptions{Store: store, Formats: DefaultFormats()})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown column: %v", err)
	}

	// A glob over good and bad files: Raise fails naming the bad one; Skip
	// leaves it out and says so.
	spec := Spec{Format: "parquet", URIs: []string{root + "/bad_data/PARQUET-1481.parquet", root + "/valid/alltypes_plain.parquet"}}
	if _, err := Open(ctx, spec, OpenOptions{Store: store, Formats: DefaultFormats()}); err == nil || !strings.Contains(err.Error(), "PARQUET-1481") {
		t.Fatalf("raise: %v", err)
	}
	spec.OnError = Skip
	ds, err = Open(ctx, spec, OpenOptions{Store: store, Formats: DefaultFormats()})
	if err != nil || ds.Rows != 8 || len(ds.Skipped) != 1 {
		t.Fatalf("skip: %v, %+v", err, ds)
	}
}
