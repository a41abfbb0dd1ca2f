package shard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/tests/corpora"
)

func openImages(t *testing.T, root string, spec Spec) (*Dataset, error) {
	t.Helper()
	store, err := NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	spec.Format = "images"
	if spec.URIs == nil {
		spec.URIs = []string{root}
	}
	return Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()})
}

// readRows reads every block of ds in order.
func readRows(t *testing.T, ds *Dataset, mem memory.Allocator) []arrow.RecordBatch {
	t.Helper()
	var out []arrow.RecordBatch
	for i := range ds.Blocks {
		rec, err := ds.ReadBlock(context.Background(), i, mem)
		if err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if rec.NumRows() != ds.Blocks[i].Rows {
			t.Fatalf("block %d: %d rows, planned %d", i, rec.NumRows(), ds.Blocks[i].Rows)
		}
		out = append(out, rec)
	}
	return out
}

// The ImageNet sample: one image in each of 143 class folders. Labels are
// the class's index among the sorted folder names, as ImageFolder's.
func TestImagesFolder(t *testing.T) {
	root := corpora.Path(t, "images", "imagenet-sample")
	ds, err := openImages(t, root, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var classes []string
	for _, e := range entries {
		classes = append(classes, e.Name())
	}
	if ds.Rows != 143 || len(classes) != 143 {
		t.Fatalf("%d rows, %d classes", ds.Rows, len(classes))
	}
	var got []string
	if err := json.Unmarshal([]byte(ds.Schema().Metadata().Values()[0]), &got); err != nil || !slices.Equal(got, classes) {
		t.Errorf("classes metadata %v (%v), want the folder names", got, err)
	}
	if len(ds.Blocks) < 4 {
		t.Errorf("17 MB of images in %d blocks", len(ds.Blocks))
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	row := int64(0)
	for bi, rec := range readRows(t, ds, mem) {
		imgs := rec.Column(0).(*array.Binary)
		labels := rec.Column(1).(*array.Int64)
		paths := rec.Column(2).(*array.String)
		for i := range int(rec.NumRows()) {
			p := paths.Value(i)
			if want := filepath.Base(filepath.Dir(p)); classes[labels.Value(i)] != want {
				t.Errorf("%s: label %d is class %s", p, labels.Value(i), classes[labels.Value(i)])
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(imgs.Value(i), data) {
				t.Errorf("%s: image bytes differ from the file", p)
			}
			if file, _ := ds.RowPlace(bi, int64(i)); file != p {
				t.Errorf("row place %s, want %s", file, p)
			}
			if ds.RowID(bi, int64(i)) != row {
				t.Errorf("block %d row %d: id %d, want %d", bi, i, ds.RowID(bi, int64(i)), row)
			}
			row++
		}
		rec.Release()
	}
	// Windows hold about WindowBytes of images.
	plan, err := ds.EpochPlan(nil, 0, 1, Exact)
	if err != nil {
		t.Fatal(err)
	}
	rp, _ := plan.Rank(0)
	var size int64
	for _, f := range ds.Listed {
		size += f.Size
	}
	if w := rp.WindowRows(); w != WindowBytes/(size/143) {
		t.Errorf("window of %d rows for %d-byte images", w, size/143)
	}
	if rp, _ := (func() (*RankPlan, error) {
		p, _ := ds.EpochPlan(&Shuffle{Seed: 1, WindowRows: 7}, 0, 1, Exact)
		return p.Rank(0)
	})(); rp.WindowRows() != 7 {
		t.Errorf("an explicit window is %d", rp.WindowRows())
	}
}

// Hidden folders, files outside class folders and non-images are left out;
// nested folders belong to their top class; columns can be chosen.
func TestImagesLayout(t *testing.T) {
	root := t.TempDir()
	jpg, err := os.ReadFile(corpora.Path(t, "images", "tricky", "jpeg-decoder", "mozilla_jpg-size-7x7.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"b/x.JPG", "b/deep/y.png", "a/z.jpeg", "a/notes.txt", "top.jpg", ".hidden/w.jpg", "a/.ipynb_checkpoints/v.jpg"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, jpg, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := openImages(t, root, Spec{Columns: []string{"path", "label"}})
	if err != nil {
		t.Fatal(err)
	}
	recs := readRows(t, ds, memory.DefaultAllocator)
	rec := recs[0]
	if rec.NumCols() != 2 || rec.Schema().Field(0).Name != "path" {
		t.Fatalf("schema %s", rec.Schema())
	}
	var got []string
	for i := range int(rec.NumRows()) {
		rel, _ := filepath.Rel(root, rec.Column(0).(*array.String).Value(i))
		got = append(got, rel+":"+string(rune('0'+rec.Column(1).(*array.Int64).Value(i))))
	}
	if want := []string{"a/z.jpeg:0", "b/deep/y.png:1", "b/x.JPG:1"}; !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	if _, err := openImages(t, root, Spec{URIs: []string{filepath.Join(root, "top.jpg")}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a file as the root: %v", err)
	}
	if _, err := openImages(t, root, Spec{URIs: []string{root + "/*"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a glob as the root: %v", err)
	}
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "loose.jpg"), jpg, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openImages(t, empty, Spec{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("no class folders: %v", err)
	}
}
