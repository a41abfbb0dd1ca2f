package shard

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/tests/corpora"
)

func openTars(t *testing.T, root string, spec Spec) (*Dataset, error) {
	t.Helper()
	store, err := NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	spec.Format = "webdataset"
	return Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()})
}

// The derived shards hold ImageNet photos with their class and metadata;
// each sample's image must be the photo named in its metadata, byte for byte.
func TestWebDatasetShards(t *testing.T) {
	root := corpora.Path(t, "webdataset", "derived")
	ds, err := openTars(t, root, Spec{URIs: []string{root + "/imagenet-sample-*.tar"}})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Rows != 24 || len(ds.Files) != 2 {
		t.Fatalf("%d rows in %d files", ds.Rows, len(ds.Files))
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	n := 0
	for bi, rec := range readRows(t, ds, mem) {
		keys := rec.Column(0).(*array.String)
		imgs := rec.Column(1).(*array.Binary)
		labels := rec.Column(2).(*array.Int64)
		jsons := rec.Column(3).(*array.String)
		for i := range int(rec.NumRows()) {
			if want := fmt.Sprintf("sample%06d", n); keys.Value(i) != want {
				t.Errorf("key %s, want %s", keys.Value(i), want)
			}
			var meta struct {
				Wnid       string `json:"wnid"`
				ClassIndex int64  `json:"class_index"`
				SourceFile string `json:"source_file"`
			}
			if err := json.Unmarshal([]byte(jsons.Value(i)), &meta); err != nil {
				t.Fatal(err)
			}
			if labels.Value(i) != meta.ClassIndex {
				t.Errorf("%s: label %d, metadata says %d", keys.Value(i), labels.Value(i), meta.ClassIndex)
			}
			src, err := os.ReadFile(corpora.Path(t, "images", "imagenet-sample", meta.Wnid, meta.SourceFile))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(imgs.Value(i), src) {
				t.Errorf("%s: image differs from %s", keys.Value(i), meta.SourceFile)
			}
			file, where := ds.RowPlace(bi, int64(i))
			if !strings.HasSuffix(file, ".tar") || !strings.Contains(where, keys.Value(i)+".jpg") {
				t.Errorf("row place %s %s", file, where)
			}
			n++
		}
		rec.Release()
	}
}

// A gzip-compressed shard (upstream's sample.tgz: 90 PNGs with classes) is
// one block; a shard of members without the kept extensions gives rows of
// nulls.
func TestWebDatasetCompressedAndOdd(t *testing.T) {
	root := corpora.Path(t, "webdataset", "upstream")
	ds, err := openTars(t, root, Spec{URIs: []string{filepath.Join(root, "sample.tgz")}, Columns: []string{"image", "label"}})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Rows != 90 || len(ds.Blocks) != 1 {
		t.Fatalf("%d rows in %d blocks", ds.Rows, len(ds.Blocks))
	}
	rec := readRows(t, ds, memory.DefaultAllocator)[0]
	for i := range 90 {
		img := rec.Column(0).(*array.Binary).Value(i)
		if !bytes.HasPrefix(img, []byte("\x89PNG")) || rec.Column(1).IsNull(i) {
			t.Fatalf("row %d: image %q..., label null %v", i, img[:min(8, len(img))], rec.Column(1).IsNull(i))
		}
	}
	ds, err = openTars(t, root, Spec{URIs: []string{filepath.Join(root, "compressed.tar")}})
	if err != nil {
		t.Fatal(err)
	}
	rec = readRows(t, ds, memory.DefaultAllocator)[0]
	if rec.Column(1).NullN() != int(rec.NumRows()) {
		t.Errorf("images of a shard without images: %d nulls of %d", rec.Column(1).NullN(), rec.NumRows())
	}
}

// The truncated shard fails naming itself; with on_error skip it is left
// out and the good shards are read.
func TestWebDatasetTruncated(t *testing.T) {
	root := corpora.Path(t, "webdataset", "derived")
	_, err := openTars(t, root, Spec{URIs: []string{root}})
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(ie.File, "MALFORMED") {
		t.Fatalf("want an InputError naming the truncated shard, got %v", err)
	}
	ds, err := openTars(t, root, Spec{URIs: []string{root}, OnError: Skip})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Rows != 24 || len(ds.Skipped) != 1 {
		t.Errorf("%d rows, %d skipped", ds.Rows, len(ds.Skipped))
	}
}

// makeTar writes n samples of size-byte "images" with labels, plus the odd
// members a real shard has: a directory, a long (PAX) name, a hidden file.
func makeTar(t testing.TB, n, size int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "shard/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		key := fmt.Sprintf("shard/%s%05d", strings.Repeat("k", 120*(i%2)), i)
		add(key+".jpg", bytes.Repeat([]byte{byte(i)}, size+i))
		add(key+".cls", []byte(fmt.Sprintf("%d\n", i%10)))
		add(key+".txt", []byte("ignored"))
	}
	add("shard/._junk.jpg", []byte("resource fork"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A large shard is split into blocks of about WebDatasetBlockBytes, each
// read with one ranged read, and every sample lands in exactly one.
func TestWebDatasetBlocks(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "big.tar"), makeTar(t, 600, 20_000), 0o644); err != nil {
		t.Fatal(err)
	}
	ds, err := openTars(t, dir, Spec{URIs: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Rows != 600 || len(ds.Blocks) < 3 {
		t.Fatalf("%d rows in %d blocks", ds.Rows, len(ds.Blocks))
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	i := 0
	for _, rec := range readRows(t, ds, mem) {
		for r := range int(rec.NumRows()) {
			img := rec.Column(1).(*array.Binary).Value(r)
			if len(img) != 20_000+i || img[0] != byte(i) || rec.Column(2).(*array.Int64).Value(r) != int64(i%10) {
				t.Fatalf("sample %d: %d bytes of %d, label %d", i, len(img), img[0], rec.Column(2).(*array.Int64).Value(r))
			}
			i++
		}
		rec.Release()
	}
}

type bytesFile struct{ *bytes.Reader }

func (bytesFile) Close() error { return nil }

// FuzzTarIndex: any bytes index as a shard or fail with an InputError, and
// every block of an indexed shard reads within its bounds.
func FuzzTarIndex(f *testing.F) {
	for _, p := range []string{"webdataset/upstream/sample.tgz", "webdataset/upstream/compressed.tar"} {
		data, err := os.ReadFile(corpora.Path(f, p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	good := makeTar(f, 4, 100)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		file := bytesFile{bytes.NewReader(data)}
		info := FileInfo{URI: "fuzz.tar", Size: int64(len(data))}
		meta, err := WebDataset{}.Inspect(context.Background(), file, info, nil)
		if err != nil {
			var ie *InputError
			if !errors.As(err, &ie) || strings.Contains(err.Error(), "panicked") {
				t.Fatalf("index: %v", err)
			}
			return
		}
		for b := range meta.Blocks {
			rec, err := WebDataset{}.ReadBlock(context.Background(), file, meta, b, nil, memory.DefaultAllocator)
			if err != nil {
				if strings.Contains(err.Error(), "panicked") {
					t.Fatal(err)
				}
				continue
			}
			if rec.NumRows() != meta.Blocks[b].Rows {
				t.Fatalf("block %d: %d rows, indexed %d", b, rec.NumRows(), meta.Blocks[b].Rows)
			}
			rec.Release()
		}
	})
}
