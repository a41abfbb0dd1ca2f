package cache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loaderd/loaderd/shard"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConcurrentMissesLoadOnce(t *testing.T) {
	c, err := New(Options{Budget: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var loads atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := c.Get("k", func() ([]byte, error) {
				loads.Add(1)
				<-release
				return []byte("value"), nil
			})
			if err != nil || string(v) != "value" {
				t.Errorf("got %q, %v", v, err)
			}
		}()
	}
	// Let every goroutine reach Get before the one load finishes.
	for c.Stats().Misses.Load() < 32 {
		runtime.Gosched()
	}
	// Each has counted its miss; give the last ones time to join the load.
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Fatalf("%d loads for one key", n)
	}
}

// countingStore counts how often files are opened and bytes read.
type countingStore struct {
	shard.Store
	reads atomic.Int64
}

type countingFile struct {
	shard.File
	s *countingStore
}

func (s *countingStore) Open(ctx context.Context, f shard.FileInfo) (shard.File, error) {
	inner, err := s.Store.Open(ctx, f)
	if err != nil {
		return nil, err
	}
	return &countingFile{inner, s}, nil
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	f.s.reads.Add(1)
	return f.File.ReadAt(p, off)
}

func TestStoreReadsThroughCache(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB: four chunks
	path := filepath.Join(dir, "f.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	local, _ := shard.NewLocalStore([]string{dir})
	inner := &countingStore{Store: local}
	c, _ := New(Options{Budget: 64 << 20})
	defer c.Close()
	s := NewStore(inner, c)
	ctx := context.Background()
	infos, err := s.Glob(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for pass := 0; pass < 3; pass++ {
		f, err := s.Open(ctx, infos[0])
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("pass %d: %d bytes, %v", pass, len(got), err)
		}
		// A read across a chunk boundary.
		buf := make([]byte, 100)
		if _, err := f.ReadAt(buf, DefaultChunk-50); err != nil || !bytes.Equal(buf, data[DefaultChunk-50:DefaultChunk+50]) {
			t.Fatalf("boundary read: %v", err)
		}
		f.Close()
		c.r.Wait() // ristretto's Set is asynchronous
	}
	// Uncached, 3 passes read 12 chunks; ristretto may drop a Set now and
	// then by design, so allow a reload or two, not a pass.
	if n := inner.reads.Load(); n < 4 || n > 6 {
		t.Fatalf("%d reads of the file's 4 chunks in 3 passes, want 4..6", n)
	}
}
