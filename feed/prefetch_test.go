package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/prometheus/client_golang/prometheus"
)

// countingStore counts reads from its files.
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

// TestEightRanksTwoJobs runs two jobs of eight ranks each on one daemon, all
// sixteen at once, for two epochs, over the same files in different orders:
// every epoch of every job delivers each row exactly once, each rank's second
// epoch was prepared while it read the first, and each block was read from
// storage once for both jobs.
func TestEightRanksTwoJobs(t *testing.T) {
	dir := t.TempDir()
	const files, perFile = 3, 2000 // 100-row row groups: 60 blocks
	for i := range files {
		writeIDs(t, filepath.Join(dir, fmt.Sprintf("part-%d.parquet", i)), perFile)
	}
	local, err := shard.NewLocalStore([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	pattern := filepath.Join(dir, "*.parquet")

	// Reads of one uncached pass: open the files, read every block once.
	alone := &countingStore{Store: local}
	ds, err := shard.Open(context.Background(), shard.Spec{Format: "parquet", URIs: []string{pattern}},
		shard.OpenOptions{Store: alone, Formats: shard.DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	for b := range ds.Blocks {
		rec, err := ds.ReadBlock(context.Background(), b, nil)
		if err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	onePass := alone.reads.Load()

	store := &countingStore{Store: local}
	mem := prefetch.NewMemory(256 << 20)
	c, err := cache.New(cache.Options{Budget: 128 << 20, Charge: mem.Charge})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := NewServer(Options{Socket: filepath.Join(t.TempDir(), "run", "d.sock")},
		Deps{Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(2), Memory: mem, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, srv)
	client, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	const world, epochs = 8, 2
	jobs := map[string]uint64{"a": 1, "b": 2}
	var mu sync.Mutex
	seen := map[string]map[int64]int{} // job/epoch → id → times
	var wg sync.WaitGroup
	for job, seed := range jobs {
		spec := shard.Spec{Format: "parquet", URIs: []string{pattern}, Shuffle: &shard.Shuffle{Seed: seed, WindowRows: 250}}
		for rank := range world {
			wg.Go(func() {
				for e := range int64(epochs) {
					ids, err := readEpoch(client, StreamRequest{Spec: spec, Rank: rank, World: world, Mode: shard.Exact,
						Epoch: e, BatchSize: 64, Job: job})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					k := fmt.Sprintf("%s/%d", job, e)
					if seen[k] == nil {
						seen[k] = map[int64]int{}
					}
					for _, id := range ids {
						seen[k][id]++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for k, ids := range seen {
		if len(ids) != perFile {
			t.Fatalf("%s: %d distinct ids, want %d", k, len(ids), perFile)
		}
		for id, n := range ids {
			if n != files { // writeIDs numbers each file's rows 0..perFile-1
				t.Fatalf("%s: id %d delivered %d times, want %d", k, id, n, files)
			}
		}
	}
	if len(seen) != len(jobs)*epochs {
		t.Fatalf("%d job epochs seen", len(seen))
	}
	if n := store.reads.Load(); n != onePass {
		t.Fatalf("storage read %d times for two jobs × %d ranks × %d epochs; one pass reads %d", n, world, epochs, onePass)
	}
	st, err := client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if la := st.Lookahead; la.Claimed != int64(len(jobs)*world*(epochs-1)) {
		t.Fatalf("look-ahead %+v: every rank's epoch after the first should have been prepared", la)
	}
	if st.Cache == nil || st.Cache.Loads != int64(len(ds.Blocks)) || st.Cache.Hits == 0 {
		t.Fatalf("cache %+v: want %d loads", st.Cache, len(ds.Blocks))
	}
	if st.Memory == nil || st.Memory.InUse <= 0 || st.Memory.Budget != 256<<20 {
		t.Fatalf("memory %+v", st.Memory)
	}
}

// readEpoch reads one epoch of one rank and returns its ids.
func readEpoch(c *Client, req StreamRequest) ([]int64, error) {
	br, err := c.Stream(context.Background(), req)
	if err != nil {
		return nil, err
	}
	defer br.Close()
	var ids []int64
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return ids, nil
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, b.Record.Column(0).(*array.Int64).Int64Values()...)
		b.Record.Release()
	}
}

func serveUntilCleanup(t testing.TB, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- srv.Serve(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(srv.Socket()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
}

// TestMetrics: the server's collector and the pipeline's metrics, gathered
// from a registry of the caller's, agree with what a session received.
func TestMetrics(t *testing.T) {
	dir := t.TempDir()
	writeIDs(t, filepath.Join(dir, "a.parquet"), 1000)
	local, _ := shard.NewLocalStore([]string{dir})
	reg := prometheus.NewRegistry()
	pm := prefetch.NewMetrics(reg)
	mem := prefetch.NewMemory(64 << 20)
	c, _ := cache.New(cache.Options{Budget: 32 << 20, Charge: mem.Charge})
	defer c.Close()
	// No look-ahead: the counts below are then exact.
	srv, err := NewServer(Options{Socket: filepath.Join(t.TempDir(), "run", "d.sock"), MaxPrepared: -1},
		Deps{Store: shard.ObserveReads(local, pm.ObserveRead), Formats: shard.DefaultFormats(),
			Pool: prefetch.NewPool(2), Memory: mem, Cache: c, Metrics: pm})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(srv.Collector())
	serveUntilCleanup(t, srv)
	client, _ := Dial(srv.Socket())
	defer client.Close()
	ids, err := readEpoch(client, StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{dir}}, World: 1, BatchSize: 100})
	if err != nil || len(ids) != 1000 {
		t.Fatalf("%d ids, %v", len(ids), err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				values[f.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				values[f.GetName()] += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				values[f.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for name, want := range map[string]float64{
		"loaderd_batches_served_total": 10, "loaderd_rows_served_total": 1000,
		"loaderd_cache_loads_total": 10, "loaderd_cache_misses_total": 10,
		"loaderd_block_seconds": 10, "loaderd_memory_budget_bytes": 64 << 20,
		"loaderd_cache_budget_bytes": 32 << 20, "loaderd_lookahead_prepared_total": 0,
	} {
		if got := values[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"loaderd_read_bytes_total", "loaderd_read_seconds_total", "loaderd_cache_bytes",
		"loaderd_memory_in_use_bytes", "loaderd_batch_wait_seconds", "loaderd_bytes_served_total"} {
		if values[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, values[name])
		}
	}
}
