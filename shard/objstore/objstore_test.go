package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/shard/objstore/objtest"
)

// backends starts each fake server with bucket "bkt" and returns a store
// factory for it: faults, when not nil, carries every request.
func backends(t *testing.T) map[string]func(*objtest.Faults) *Store {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	s3srv, err := objtest.StartS3("bkt", "other")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3srv.Close)
	gcs, err := objtest.StartGCS("bkt", "other")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gcs.Close)
	mk := func(scheme, url string) func(*objtest.Faults) *Store {
		return func(f *objtest.Faults) *Store {
			if f == nil {
				f = &objtest.Faults{}
			}
			o := Options{HTTPClient: f.Client(), Attempts: 8, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
			if scheme == "s3" {
				o.S3Endpoint = url
			} else {
				o.GCSEndpoint = url
			}
			s := New(o)
			t.Cleanup(func() { _ = s.Close() })
			return s
		}
	}
	return map[string]func(*objtest.Faults) *Store{"s3": mk("s3", s3srv.URL), "gs": mk("gs", gcs.URL)}
}

func put(t *testing.T, s *Store, uri string, data []byte) {
	t.Helper()
	b, key, err := s.Bucket(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(context.Background(), key, data, nil); err != nil {
		t.Fatal(err)
	}
}

func csvData(rows int) []byte {
	var buf bytes.Buffer
	buf.WriteString("id,name,score\n")
	for i := range rows {
		fmt.Fprintf(&buf, "%d,\"name %d, with comma\",%d.5\n", i, i, i%97)
	}
	return buf.Bytes()
}

func TestStore(t *testing.T) {
	for scheme, mk := range backends(t) {
		t.Run(scheme, func(t *testing.T) {
			ctx := context.Background()
			clean := mk(nil)
			root := scheme + "://bkt/"
			blob := make([]byte, 3<<20+12345)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range blob {
				blob[i] = byte(r.Uint32())
			}
			put(t, clean, root+"blob.bin", blob)
			put(t, clean, root+"data/a/part-0.csv", csvData(4000))
			put(t, clean, root+"data/b/part-1.csv", csvData(3000))
			put(t, clean, root+"data/_SUCCESS", nil)
			put(t, clean, root+"data/.hidden.csv", []byte("x"))
			put(t, clean, root+"notes.txt", []byte("hi"))

			// Listing: patterns with **, directories, single objects.
			for pattern, want := range map[string]string{
				root + "data/**/*.csv":   "data/a/part-0.csv data/b/part-1.csv",
				root + "data":            "data/a/part-0.csv data/b/part-1.csv",
				root + "data/":           "data/a/part-0.csv data/b/part-1.csv",
				root + "data/*/part-1.*": "data/b/part-1.csv",
				root + "blob.bin":        "blob.bin",
				root + "*.txt":           "notes.txt",
			} {
				infos, err := clean.Glob(ctx, pattern)
				if err != nil {
					t.Fatalf("%s: %v", pattern, err)
				}
				var got []string
				for _, i := range infos {
					got = append(got, strings.TrimPrefix(i.URI, root))
					if i.Version == "" || i.Size <= 0 {
						t.Fatalf("%s: %+v", pattern, i)
					}
				}
				if strings.Join(got, " ") != want {
					t.Fatalf("%s lists %v, want %s", pattern, got, want)
				}
			}
			if _, err := clean.Glob(ctx, root+"nope/**"); !errors.Is(err, shard.ErrNotFound) {
				t.Fatalf("missing prefix: %v", err)
			}
			limited := New(Options{AllowBuckets: []string{"other"}})
			if _, err := limited.Glob(ctx, root+"data"); !errors.Is(err, shard.ErrPermission) {
				t.Fatalf("bucket outside the allow-list: %v", err)
			}

			// Faults: 503s, cut bodies and slow reads; every byte arrives
			// once, in place.
			faults := &objtest.Faults{FailEvery: 5, CutEvery: 2, CutAfter: 10000, Delay: 10 * time.Microsecond}
			faulty := mk(faults)
			infos, err := faulty.Glob(ctx, root+"blob.bin")
			if err != nil {
				t.Fatal(err)
			}
			f, err := faulty.Open(ctx, infos[0])
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(blob))
			for off := 0; off < len(blob); off += 256 << 10 {
				end := min(off+256<<10, len(blob))
				if n, err := f.ReadAt(got[off:end], int64(off)); err != nil || n != end-off {
					t.Fatalf("ReadAt(%d): %d, %v", off, n, err)
				}
			}
			if !bytes.Equal(got, blob) {
				t.Fatal("bytes read through faults differ")
			}
			tail := make([]byte, 100)
			if n, err := f.ReadAt(tail, int64(len(blob)-10)); n != 10 || !errors.Is(err, io.EOF) {
				t.Fatalf("read past the end: %d, %v", n, err)
			}
			if faults.Cut == 0 || faults.Failed == 0 {
				t.Fatalf("no faults were injected: %+v", faults)
			}

			// A whole dataset through the faults reads the same rows.
			spec := shard.Spec{Format: "csv", URIs: []string{root + "data/**/*.csv"}, Options: map[string]string{shard.OptBlockBytes: "16384"}}
			want := readRows(t, clean, spec)
			if gotRows := readRows(t, faulty, spec); gotRows != want || !strings.Contains(want, "\n3999|") {
				t.Fatalf("rows through faults differ (%d vs %d bytes)", len(gotRows), len(want))
			}
			t.Logf("%s: %d ranged GETs, %d failed, %d cut", scheme, faults.Ranged, faults.Failed, faults.Cut)
		})
	}
}

// readRows reads a dataset and prints every row.
func readRows(t *testing.T, s *Store, spec shard.Spec) string {
	t.Helper()
	ds, err := shard.Open(context.Background(), spec, shard.OpenOptions{Store: s, Formats: shard.DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for i := range ds.Blocks {
		rec, err := ds.ReadBlock(context.Background(), i, memory.DefaultAllocator)
		if err != nil {
			t.Fatal(err)
		}
		for r := range int(rec.NumRows()) {
			for c := range int(rec.NumCols()) {
				sb.WriteString(rec.Column(c).ValueStr(r) + "|")
			}
			sb.WriteString("\n")
		}
		rec.Release()
	}
	return sb.String()
}

// A failure that retrying cannot fix is reported at once, classified.
func TestNotFound(t *testing.T) {
	for scheme, mk := range backends(t) {
		s := mk(nil)
		if _, err := s.Glob(context.Background(), scheme+"://bkt/missing.csv"); !errors.Is(err, shard.ErrNotFound) {
			t.Fatalf("%s: %v", scheme, err)
		}
		f, err := s.Open(context.Background(), shard.FileInfo{URI: scheme + "://bkt/missing.csv", Size: 10})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(make([]byte, 5), 0); !errors.Is(err, shard.ErrNotFound) {
			t.Fatalf("%s: read of a missing object: %v", scheme, err)
		}
	}
}
