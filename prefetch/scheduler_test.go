package prefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
)

// request asks for rank's epoch of src's rows.
func request(src *memSource, sh *shard.Shuffle, rank, world int, mode shard.Mode, epoch int64, bs int) Request {
	key := EpochKey{Dataset: src, Rank: rank, World: world, Mode: mode, Epoch: epoch, BatchSize: bs}
	if sh != nil {
		key.Shuffled, key.Seed, key.WindowRows = true, sh.Seed, sh.WindowRows
	}
	return Request{Key: key, Source: src, Options: Options{ReadAhead: 2, Ahead: 3},
		Plan: func(e int64) (*shard.RankPlan, error) {
			p, err := shard.NewEpochPlan(src.rows, sh, e, world, mode)
			if err != nil {
				return nil, err
			}
			return p.Rank(rank)
		}}
}

// drainStream reads a stream to its end and closes it.
func drainStream(t *testing.T, s *Stream) []int64 {
	t.Helper()
	defer s.Close()
	var ids []int64
	for {
		b, err := s.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.Record.Column(0).(*array.Int64).Int64Values()...)
		b.Record.Release()
	}
}

// TestLookaheadServesTheSameBatches: over layouts, seeds, world sizes and
// modes, each rank's next epoch is prepared while it reads the current one,
// is claimed by the session that asks for it, and yields exactly what a
// stream started afresh yields; every byte is released at the end.
func TestLookaheadServesTheSameBatches(t *testing.T) {
	layouts := [][]int64{{1}, {0, 5, 0, 3}, {100, 7, 250, 1, 40}, slices.Repeat([]int64{33}, 20)}
	shuffles := []*shard.Shuffle{nil, {Seed: 7}, {Seed: 42, WindowRows: 50}}
	for li, rows := range layouts {
		for _, world := range []int{1, 3, 8} {
			for si, sh := range shuffles {
				for _, mode := range []shard.Mode{shard.Even, shard.Exact} {
					t.Run(fmt.Sprintf("layout%d/w%d/shuffle%d/%v", li, world, si, mode), func(t *testing.T) {
						mem := NewMemory(64 << 20)
						checked := memory.NewCheckedAllocator(mem)
						src := newMemSource(rows)
						s := NewScheduler(SchedulerOptions{Pool: NewPool(2), Memory: mem})
						const epochs = 3
						for rank := range world {
							for e := int64(0); e < epochs; e++ {
								req := request(src, sh, rank, world, mode, e, 16)
								req.Options.Mem = checked
								st, err := s.Open(req)
								if err != nil {
									t.Fatal(err)
								}
								if want := e > 0 && st.Plan().Len() > 0; st.Prepared() != want {
									t.Fatalf("rank %d epoch %d: prepared=%v, want %v", rank, e, st.Prepared(), want)
								}
								got := drainStream(t, st)
								fresh, _ := req.Plan(e)
								d, err := drain(t, src, fresh, 0, Options{BatchSize: 16, Mem: checked})
								if err != nil {
									t.Fatal(err)
								}
								if !slices.Equal(got, d.ids) {
									t.Fatalf("rank %d epoch %d: prepared stream gave %v, a fresh one %v", rank, e, got, d.ids)
								}
							}
						}
						s.Close()
						checked.AssertSize(t, 0)
						if st := mem.Stats(); st.InUse != 0 || st.Reserved != 0 || st.Charged != 0 {
							t.Fatalf("memory left: %+v", st)
						}
					})
				}
			}
		}
	}
}

func TestLookaheadOnlyForTheSameEpoch(t *testing.T) {
	rows := []int64{100, 100, 100}
	src := newMemSource(rows)
	s := NewScheduler(SchedulerOptions{Pool: NewPool(2)})
	defer s.Close()
	st, err := s.Open(request(src, &shard.Shuffle{Seed: 1}, 0, 2, shard.Exact, 0, 10))
	if err != nil {
		t.Fatal(err)
	}
	drainStream(t, st)
	if got := s.Stats(); got.Waiting != 1 || got.Prepared != 1 {
		t.Fatalf("after epoch 0: %+v", got)
	}
	// Another batch size, seed, rank or epoch is not what was prepared.
	for _, req := range []Request{
		request(src, &shard.Shuffle{Seed: 1}, 0, 2, shard.Exact, 1, 11),
		request(src, &shard.Shuffle{Seed: 2}, 0, 2, shard.Exact, 1, 10),
		request(src, &shard.Shuffle{Seed: 1}, 1, 2, shard.Exact, 1, 10),
		request(src, &shard.Shuffle{Seed: 1}, 0, 2, shard.Exact, 2, 10),
	} {
		st, err := s.Open(req)
		if err != nil {
			t.Fatal(err)
		}
		if st.Prepared() {
			t.Fatalf("%+v claimed the epoch prepared for another", req.Key)
		}
		st.Close()
	}
	// A resume inside the prepared epoch starts afresh, exactly at its cursor.
	req := request(src, &shard.Shuffle{Seed: 1}, 0, 2, shard.Exact, 1, 10)
	req.From = 37
	st, err = s.Open(req)
	if err != nil {
		t.Fatal(err)
	}
	if st.Prepared() {
		t.Fatal("a resume claimed a stream that starts at 0")
	}
	got := drainStream(t, st)
	plan, _ := req.Plan(1)
	all, _ := drain(t, src, plan, 0, Options{BatchSize: 10})
	if !slices.Equal(got, all.ids[37:]) {
		t.Fatalf("resume at 37: %v, want %v", got, all.ids[37:])
	}
	// The prepared one is still there for the session that asks for it.
	req.From = 0
	if st, _ = s.Open(req); !st.Prepared() {
		t.Fatal("the prepared epoch was lost")
	}
	st.Close()
}

// TestLookaheadExpires: a prepared epoch nobody claims is closed after the
// TTL, releasing what it held; one unclaimed prepares nothing further.
// Time is synctest's: the two minutes pass at once.
func TestLookaheadExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := NewMemory(64 << 20)
		rows := []int64{5, 5} // an epoch fits in the queue: the prepared one reaches its end unclaimed
		src := newMemSource(rows)
		s := NewScheduler(SchedulerOptions{Pool: NewPool(2), Memory: mem, LookaheadTTL: time.Minute})
		defer s.Close()
		drainStream(t, must(s.Open(request(src, nil, 0, 1, shard.Exact, 0, 4))))
		synctest.Wait()
		if got := s.Stats(); got.Waiting != 1 || got.Prepared != 1 {
			t.Fatalf("after epoch 0: %+v", got)
		}
		if mem.Stats().InUse == 0 {
			t.Fatal("the prepared epoch holds no batches")
		}
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if got := s.Stats(); got.Waiting != 1 || got.Prepared != 1 || got.Expired != 0 {
			t.Fatalf("before the TTL: %+v (an unclaimed epoch must not prepare the next)", got)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := s.Stats(); got.Waiting != 0 || got.Expired != 1 {
			t.Fatalf("after the TTL: %+v", got)
		}
		if st := mem.Stats(); st.InUse != 0 || st.Reserved != 0 {
			t.Fatalf("an expired epoch left memory: %+v", st)
		}
		// The session comes back late: it gets a fresh stream, still right.
		st := must(s.Open(request(src, nil, 0, 1, shard.Exact, 1, 4)))
		if st.Prepared() {
			t.Fatal("claimed an expired epoch")
		}
		if got := drainStream(t, st); len(got) != 10 {
			t.Fatalf("late epoch: %v", got)
		}
	})
}

func TestLookaheadBounded(t *testing.T) {
	src := newMemSource([]int64{50, 50})
	s := NewScheduler(SchedulerOptions{Pool: NewPool(2), MaxPrepared: 2})
	defer s.Close()
	for rank := range 4 {
		drainStream(t, must(s.Open(request(src, nil, rank, 4, shard.Even, 0, 8))))
	}
	if got := s.Stats(); got.Waiting != 2 || got.Refused != 2 {
		t.Fatalf("%+v: want 2 waiting, 2 refused", got)
	}
	off := NewScheduler(SchedulerOptions{Pool: NewPool(2), MaxPrepared: -1})
	defer off.Close()
	drainStream(t, must(off.Open(request(src, nil, 0, 1, shard.Even, 0, 8))))
	if got := off.Stats(); got.Prepared != 0 {
		t.Fatalf("look-ahead off prepared %+v", got)
	}
}

// TestStoppedRankDoesNotStallOthers: with a memory budget a few blocks deep,
// rank 0 takes one batch, fills its queue and stops reading; the other ranks
// stream three epochs each to the end, concurrently, sharing the pool and
// the budget.
func TestStoppedRankDoesNotStallOthers(t *testing.T) {
	rows := slices.Repeat([]int64{500}, 64) // ~11 KB a block decoded
	src := newMemSource(rows)
	mem := NewMemory(64 << 10)
	s := NewScheduler(SchedulerOptions{Pool: NewPool(2), Memory: mem})
	defer s.Close()
	const world = 8
	stopped := must(s.Open(request(src, &shard.Shuffle{Seed: 3}, 0, world, shard.Exact, 0, 32)))
	defer stopped.Close()
	b := must(stopped.Next(context.Background()))
	b.Record.Release()
	for stopped.QueueDepth() < stopped.QueueCap() {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for rank := 1; rank < world; rank++ {
		wg.Go(func() {
			for e := range int64(3) {
				st, err := s.Open(request(src, &shard.Shuffle{Seed: 3}, rank, world, shard.Exact, e, 32))
				if err != nil {
					t.Error(err)
					return
				}
				if n := len(drainStream(t, st)); int64(n) != st.Plan().Len() {
					t.Errorf("rank %d epoch %d: %d of %d rows", rank, e, n, st.Plan().Len())
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second): // a hang, not a speed check
		t.Fatalf("ranks stalled behind a stopped one; memory %+v", mem.Stats())
	}
	if stopped.QueueDepth() == 0 || mem.Stats().Waited == 0 {
		t.Fatalf("the stopped rank queued %d batches and reads waited %v for memory: the test tested nothing",
			stopped.QueueDepth(), mem.Stats().Waited)
	}
}

func TestSchedulerClosed(t *testing.T) {
	s := NewScheduler(SchedulerOptions{})
	s.Close()
	s.Close()
	if _, err := s.Open(request(newMemSource([]int64{3}), nil, 0, 1, shard.Exact, 0, 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("open after close: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
