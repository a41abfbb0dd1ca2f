package shard

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Every writer's output reads back as the same rows through the readers.
func TestWritersRoundTrip(t *testing.T) {
	mem := memory.DefaultAllocator
	rec := confTable(t, mem)
	defer rec.Release()
	for format, ext := range WriteFormats {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			store, err := NewLocalStore([]string{dir})
			if err != nil {
				t.Fatal(err)
			}
			sink, err := store.OpenDir(context.Background(), filepath.Join(dir, "out", "nested"))
			if err != nil {
				t.Fatal(err)
			}
			part, err := sink.Create(context.Background(), "part-00000."+ext)
			if err != nil {
				t.Fatal(err)
			}
			w, err := NewRecordWriter(format, part, rec.Schema())
			if err != nil {
				t.Fatal(err)
			}
			for off := int64(0); off < rec.NumRows(); off += 1000 {
				s := rec.NewSlice(off, min(off+1000, rec.NumRows()))
				if err := w.Write(s); err != nil {
					t.Fatal(err)
				}
				s.Release()
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			// Nothing is visible under the final name before Commit.
			if _, err := os.Stat(part.Name()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s exists before commit: %v", part.Name(), err)
			}
			if err := part.Commit(); err != nil {
				t.Fatal(err)
			}
			entries, _ := os.ReadDir(filepath.Dir(part.Name()))
			if len(entries) != 1 {
				t.Fatalf("directory holds %d entries, want the one file", len(entries))
			}
			ds, err := openOne(t, part.Name(), format, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := readDataset(ds, mem)
			if err != nil {
				t.Fatal(err)
			}
			sameRows(t, rec, recs, nil)
			releaseAll(recs)
		})
	}
}

func TestOutputConfinement(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	store, err := NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{outside + "/x", filepath.Join(root, "link", "x"), filepath.Join(root, "..", filepath.Base(outside))} {
		if _, err := store.OpenDir(context.Background(), dir); !errors.Is(err, ErrPermission) {
			t.Fatalf("%s: want ErrPermission, got %v", dir, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("something was created outside the root: %v", entries)
	}
	// An aborted part leaves nothing behind.
	sink, err := store.OpenDir(context.Background(), filepath.Join(root, "out"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := sink.Create(context.Background(), "part-00000.csv")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = p.Write([]byte("a,b\n"))
	p.Abort()
	if entries, _ := os.ReadDir(filepath.Join(root, "out")); len(entries) != 0 {
		t.Fatalf("an aborted part left %v", entries)
	}
	if _, err := NewRecordWriter("csv", &bytes.Buffer{}, arrow.NewSchema([]arrow.Field{{Name: "l", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)}}, nil)); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("CSV of a list column: %v", err)
	}
}

func TestGroupBy(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := confTable(t, mem)
	defer rec.Release()
	g, err := GroupBy(context.Background(), rec, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	if g.Len() != len(tricky) {
		t.Fatalf("%d groups, want %d", g.Len(), len(tricky))
	}
	counts, err := g.Counts(context.Background(), mem)
	if err != nil {
		t.Fatal(err)
	}
	defer counts.Release()
	keys := counts.Column(0).(*array.String)
	var total int64
	for i := range g.Len() {
		if i > 0 && keys.Value(i-1) >= keys.Value(i) {
			t.Fatalf("keys out of order: %q, %q", keys.Value(i-1), keys.Value(i))
		}
		grp, err := g.Group(context.Background(), i)
		if err != nil {
			t.Fatal(err)
		}
		n := counts.Column(1).(*array.Int64).Value(i)
		ids := grp.Column(0).(*array.Int64)
		for r := range int(grp.NumRows()) {
			if grp.Column(2).(*array.String).Value(r) != keys.Value(i) || (r > 0 && ids.Value(r) <= ids.Value(r-1)) {
				t.Fatalf("group %d row %d is wrong or out of order", i, r)
			}
		}
		if grp.NumRows() != n {
			t.Fatalf("group %d has %d rows, counted %d", i, grp.NumRows(), n)
		}
		total += n
		grp.Release()
	}
	if total != rec.NumRows() {
		t.Fatalf("groups hold %d rows of %d", total, rec.NumRows())
	}
	if _, err := GroupBy(context.Background(), rec, "nope"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("missing key: %v", err)
	}
}
