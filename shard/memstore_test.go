package shard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/tests/corpora"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// put uploads b in chunks of 7 bytes and commits it.
func put(t *testing.T, s *MemStore, b []byte) FileInfo {
	t.Helper()
	up, err := s.Begin(digest(b), int64(len(b)))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	for rest := b; len(rest) > 0; {
		n := min(7, len(rest))
		if _, err := up.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	f, err := up.Commit()
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return f
}

// TestMemStoreServesParquet reads an uploaded corpus file as a dataset
// through the router, as the daemon does, and gets what the file holds.
func TestMemStoreServesParquet(t *testing.T) {
	path := corpora.Path(t, "parquet", "derived", "derived_zipcodes_snappy_rg8192.parquet")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var charged int64
	s := NewMemStore(int64(len(data))+100, func(n int64) { charged += n })
	f := put(t, s, data)
	if f.URI != "mem://"+digest(data) || f.Size != int64(len(data)) {
		t.Fatalf("FileInfo %+v", f)
	}
	if charged != int64(len(data)) {
		t.Fatalf("charged %d, want %d", charged, len(data))
	}
	ctx := context.Background()
	fromMem, err := Open(ctx, Spec{Format: "parquet", URIs: []string{f.URI}},
		OpenOptions{Store: Router{Remote: map[string]Store{MemScheme: s}}, Formats: DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	local, err := NewLocalStore([]string{corpora.Dir(t)})
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := Open(ctx, Spec{Format: "parquet", URIs: []string{path}},
		OpenOptions{Store: local, Formats: DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	if fromMem.Rows != fromFile.Rows || len(fromMem.Blocks) != len(fromFile.Blocks) || fromMem.Rows == 0 {
		t.Fatalf("uploaded copy: %d rows in %d blocks; file: %d rows in %d blocks",
			fromMem.Rows, len(fromMem.Blocks), fromFile.Rows, len(fromFile.Blocks))
	}
	last := len(fromMem.Blocks) - 1
	a, err := fromMem.ReadBlock(ctx, last, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	b, err := fromFile.ReadBlock(ctx, last, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	for c := range int(a.NumCols()) {
		if a.Column(c).String() != b.Column(c).String() {
			t.Fatalf("column %d of block %d differs", c, last)
		}
	}
}

func TestMemStoreDropsLeastRecentlyUsed(t *testing.T) {
	var charged int64
	s := NewMemStore(100, func(n int64) { charged += n })
	a, b, c := []byte(strings.Repeat("a", 40)), []byte(strings.Repeat("b", 40)), []byte(strings.Repeat("c", 40))
	fa, fb := put(t, s, a), put(t, s, b)
	ctx := context.Background()
	// a is used after b: b is the least recently used when c needs room.
	if _, err := s.Glob(ctx, fa.URI); err != nil {
		t.Fatal(err)
	}
	fc := put(t, s, c)
	if _, err := s.Glob(ctx, fb.URI); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "upload it again") {
		t.Fatalf("dropped table: got %v, want ErrNotFound saying to upload again", err)
	}
	for _, f := range []FileInfo{fa, fc} {
		r, err := s.Open(ctx, f)
		if err != nil {
			t.Fatalf("%s: %v", f.URI, err)
		}
		buf := make([]byte, 40)
		if _, err := r.ReadAt(buf, 0); err != nil || r.Size() != 40 {
			t.Fatalf("%s: read %v, size %d", f.URI, err, r.Size())
		}
	}
	st := s.Stats()
	if st.Tables != 2 || st.Bytes != 80 || st.Evictions != 1 || st.Uploads != 3 || charged != 80 {
		t.Fatalf("stats %+v, charged %d", st, charged)
	}
}

func TestMemStoreRefuses(t *testing.T) {
	var charged int64
	s := NewMemStore(100, func(n int64) { charged += n })
	data := []byte("0123456789")
	d := digest(data)
	check := func(what string, err, class error, words string) {
		t.Helper()
		if !errors.Is(err, class) || !strings.Contains(err.Error(), words) {
			t.Errorf("%s: got %v, want %v saying %q", what, err, class, words)
		}
	}
	_, err := s.Begin(d, 101)
	check("too large", err, ErrExhausted, "upload-bytes")
	_, err = s.Begin("ABC", 10)
	check("bad digest", err, ErrInvalid, "SHA-256")
	_, err = s.Begin(d, 0)
	check("empty", err, ErrInvalid, "positive")

	up, err := s.Begin(d, 10)
	if err != nil {
		t.Fatal(err)
	}
	_, err = up.Write(make([]byte, 11))
	check("overrun", err, ErrInvalid, "more than")
	_, err = up.Commit()
	check("short", err, ErrInvalid, "after 0 of the 10 bytes")

	up, err = s.Begin(d, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Write([]byte("0123456780")); err != nil {
		t.Fatal(err)
	}
	_, err = up.Commit()
	check("digest mismatch", err, ErrInvalid, "not the "+d)

	// Room held by an upload in progress is not given away, and a table
	// is not dropped for an upload that would not fit anyway.
	small := []byte("12345")
	put(t, s, small)
	held, err := s.Begin(digest(make([]byte, 95)), 95)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Begin(d, 10)
	check("in progress", err, ErrExhausted, "in progress")
	if !s.Has(digest(small)) {
		t.Fatal("a table was dropped for an upload that was then refused")
	}
	held.Abort()
	held.Abort()
	if charged != int64(len(small)) {
		t.Fatalf("after failed and aborted uploads %d bytes are charged, want the %d held", charged, len(small))
	}
	_, err = s.Glob(context.Background(), "mem://"+d)
	check("never uploaded", err, ErrNotFound, "mem://"+d)
	_, err = s.Glob(context.Background(), "mem://*")
	check("pattern", err, ErrInvalid, "SHA-256")
}

// TestMemStoreSameTableTwice: two uploads of one table at once keep one copy.
func TestMemStoreSameTableTwice(t *testing.T) {
	var charged int64
	s := NewMemStore(100, func(n int64) { charged += n })
	data := []byte("same bytes")
	u1, err1 := s.Begin(digest(data), int64(len(data)))
	u2, err2 := s.Begin(digest(data), int64(len(data)))
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	for _, u := range []*Upload{u1, u2} {
		if _, err := u.Write(data); err != nil {
			t.Fatal(err)
		}
		if _, err := u.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Tables != 1 || st.Bytes != int64(len(data)) || st.Reserved != 0 || charged != int64(len(data)) {
		t.Fatalf("stats %+v, charged %d", st, charged)
	}
}
