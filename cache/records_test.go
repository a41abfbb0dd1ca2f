package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/tests/corpora"
)

var idSchema = arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)

// record makes key's record: 1000 values key*1000+i (8 KB).
func record(mem memory.Allocator, key int) arrow.RecordBatch {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	for i := range 1000 {
		b.Append(int64(key*1000 + i))
	}
	a := b.NewArray()
	defer a.Release()
	return array.NewRecordBatch(idSchema, []arrow.Array{a}, 1000)
}

func checkRecord(t *testing.T, rec arrow.RecordBatch, key int) {
	t.Helper()
	col := rec.Column(0).(*array.Int64)
	for i := 0; i < col.Len(); i += 97 {
		if col.Value(i) != int64(key*1000+i) {
			t.Errorf("key %d: value %d at %d: the record was freed or reused under us", key, col.Value(i), i)
			return
		}
	}
}

// TestRecordsConcurrent hammers a cache much smaller than the working set
// from many goroutines, holding records across evictions and giving up on
// some gets half-way: every record read back intact, and every byte freed.
func TestRecordsConcurrent(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c, err := New(Options{Budget: 100 << 10}) // ~12 records of 100 keys
	if err != nil {
		t.Fatal(err)
	}
	var loads [100]atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var held []arrow.RecordBatch
			var keys []int
			for range 600 {
				k := rng.IntN(100)
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if rng.IntN(10) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
				}
				rec, err := c.Record(ctx, fmt.Sprint(k), func() (arrow.RecordBatch, error) {
					loads[k].Add(1)
					return record(mem, k), nil
				})
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Error(err)
					}
					continue
				}
				checkRecord(t, rec, k)
				held, keys = append(held, rec), append(keys, k)
				if len(held) > 4 { // hold a few across evictions
					i := rng.IntN(len(held))
					checkRecord(t, held[i], keys[i])
					held[i].Release()
					held = append(held[:i], held[i+1:]...)
					keys = append(keys[:i], keys[i+1:]...)
				}
			}
			for _, r := range held {
				r.Release()
			}
		})
	}
	wg.Wait()
	c.r.Wait()
	st := c.Stats()
	if st.Hits.Load() == 0 || st.Evictions.Load()+st.Rejections.Load() == 0 {
		t.Fatalf("hits %d, evictions %d, rejections %d: the test did not exercise the cache",
			st.Hits.Load(), st.Evictions.Load(), st.Rejections.Load())
	}
	if b := st.Bytes.Load(); b > c.Budget() || b < 0 {
		t.Fatalf("cache holds %d bytes, budget %d", b, c.Budget())
	}
	c.Close()
	if b := st.Bytes.Load(); b != 0 {
		t.Fatalf("closed cache holds %d bytes", b)
	}
}

func TestRecordConcurrentMissesLoadOnce(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	for _, budget := range []int64{0, 64 << 20} { // coalescing works with the cache off too
		c, _ := New(Options{Budget: budget})
		var loads atomic.Int64
		release := make(chan struct{})
		var wg sync.WaitGroup
		recs := make([]arrow.RecordBatch, 32)
		for i := range recs {
			wg.Go(func() {
				rec, err := c.Record(context.Background(), "k", func() (arrow.RecordBatch, error) {
					loads.Add(1)
					<-release
					return record(mem, 7), nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				recs[i] = rec
			})
		}
		for c.Stats().Misses.Load() < 32 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // the last to miss joins the flight
		close(release)
		wg.Wait()
		if n := loads.Load(); n != 1 {
			t.Fatalf("budget %d: %d loads for one key", budget, n)
		}
		for _, r := range recs {
			checkRecord(t, r, 7)
			r.Release()
		}
		c.Close()
	}
}

func TestRecordWaiterGivesUp(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c, _ := New(Options{Budget: 64 << 20})
	defer c.Close()
	release := make(chan struct{})
	leader := make(chan arrow.RecordBatch)
	go func() {
		rec, _ := c.Record(context.Background(), "k", func() (arrow.RecordBatch, error) {
			<-release
			return record(mem, 1), nil
		})
		leader <- rec
	}()
	for c.Stats().Misses.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := c.Record(ctx, "k", func() (arrow.RecordBatch, error) {
		t.Error("a waiter loaded")
		return nil, errors.New("no")
	}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter: %v", err)
	}
	close(release)
	(<-leader).Release()
}

func TestRecordLeaderCanceledWaiterRetries(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c, _ := New(Options{Budget: 64 << 20})
	defer c.Close()
	release := make(chan struct{})
	lctx, lcancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := c.Record(lctx, "k", func() (arrow.RecordBatch, error) {
			<-release
			return nil, lctx.Err()
		})
		done <- err
	}()
	for c.Stats().Misses.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	got := make(chan arrow.RecordBatch)
	go func() {
		rec, err := c.Record(context.Background(), "k", func() (arrow.RecordBatch, error) { return record(mem, 3), nil })
		if err != nil {
			t.Error(err)
		}
		got <- rec
	}()
	time.Sleep(10 * time.Millisecond)
	lcancel()
	close(release)
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	rec := <-got
	checkRecord(t, rec, 3)
	rec.Release()
}

func TestRecordLargerThanBudget(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c, _ := New(Options{Budget: 1 << 10})
	var loads int
	for range 3 {
		rec, err := c.Record(context.Background(), "big", func() (arrow.RecordBatch, error) {
			loads++
			return record(mem, 2), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		checkRecord(t, rec, 2)
		rec.Release()
	}
	if loads != 3 || c.Stats().Rejections.Load() != 3 {
		t.Fatalf("%d loads, %d rejections: an item over budget must be loaded each time and never kept", loads, c.Stats().Rejections.Load())
	}
	c.Close()
}

// TestBlocksTwoJobsReadOnce: two jobs open the same Parquet files, in
// different orders, and read every block at the same time through one cache:
// each block's bytes come from storage once.
func TestBlocksTwoJobsReadOnce(t *testing.T) {
	files := []string{
		corpora.Path(t, "parquet", "derived", "derived_zipcodes_snappy_rg8192.parquet"),
		corpora.Path(t, "parquet", "derived", "derived_birdstrikes_zstd_rg8192.parquet"),
	}
	local, err := shard.NewLocalStore([]string{corpora.Dir(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	open := func(st shard.Store, seed uint64) *shard.Dataset {
		ds, err := shard.Open(ctx, shard.Spec{Format: "parquet", URIs: files[:1], Shuffle: &shard.Shuffle{Seed: seed}},
			shard.OpenOptions{Store: st, Formats: shard.DefaultFormats()})
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)

	// One job alone, uncached: the reads one pass takes.
	alone := &countingStore{Store: local}
	ds := open(alone, 1)
	alone.reads.Store(0)
	for b := range ds.Blocks {
		rec, err := ds.ReadBlock(ctx, b, mem)
		if err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	onePass := alone.reads.Load()

	inner := &countingStore{Store: local}
	jobs := []*shard.Dataset{open(inner, 1), open(inner, 2)}
	inner.reads.Store(0)
	c, _ := New(Options{Budget: 256 << 20})
	var wg sync.WaitGroup
	for _, ds := range jobs {
		for rank := range 3 { // three ranks of each job, every block each
			wg.Go(func() {
				src := c.Blocks(ds)
				for i := range ds.Blocks {
					b := (i + rank) % len(ds.Blocks)
					rec, err := src.ReadBlock(ctx, b, mem)
					if err != nil {
						t.Error(err)
						return
					}
					if rec.NumRows() != ds.Blocks[b].Rows {
						t.Errorf("block %d: %d rows, want %d", b, rec.NumRows(), ds.Blocks[b].Rows)
					}
					rec.Release()
				}
			})
		}
	}
	wg.Wait()
	if n := inner.reads.Load(); n != onePass {
		t.Fatalf("two jobs × three ranks read %d times; one pass reads %d: blocks were not shared", n, onePass)
	}
	if c.Stats().Loads.Load() != int64(len(jobs[0].Blocks)) {
		t.Fatalf("%d loads for %d blocks", c.Stats().Loads.Load(), len(jobs[0].Blocks))
	}
	c.Close()
}
