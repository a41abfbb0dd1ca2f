package prefetch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitQueued waits until the pool has n waiters across its lanes.
func waitQueued(p *Pool, n int) {
	for {
		p.mu.Lock()
		q := 0
		for _, l := range p.ring {
			q += len(l.waiting)
		}
		p.mu.Unlock()
		if q >= n {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// waitBusy waits until every worker of the pool is taken.
func waitBusy(p *Pool) {
	for {
		p.mu.Lock()
		busy := p.free == 0
		p.mu.Unlock()
		if busy {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// TestPoolServesLanesInTurn queues work on lanes of a one-worker pool, one
// lane after the other, and checks the order the worker takes it in: lanes
// in turn, each lane's own work in order, whatever the queue lengths.
func TestPoolServesLanesInTurn(t *testing.T) {
	for _, tc := range []struct {
		queued []int  // tasks per lane, queued lane by lane
		want   string // order of service after the task holding the worker
	}{
		{[]int{3}, "aaa"},
		{[]int{5, 1}, "abaaaa"},
		{[]int{4, 2, 1}, "abcabaa"},
		{[]int{1, 1, 1, 1}, "abcd"},
		{[]int{2, 0, 3}, "acacc"},
	} {
		p := NewPool(1)
		hold := make(chan struct{})
		var mu sync.Mutex
		var order strings.Builder
		var wg sync.WaitGroup
		wg.Go(func() { _ = p.Do(context.Background(), func() { <-hold }) })
		waitBusy(p)
		total := 0
		for i, n := range tc.queued {
			l := p.Lane()
			name := string(rune('a' + i))
			for range n {
				total++
				wg.Go(func() {
					_ = l.Do(context.Background(), func() {
						mu.Lock()
						order.WriteString(name)
						mu.Unlock()
					})
				})
				waitQueued(p, total) // queue in a known order
			}
		}
		close(hold)
		wg.Wait()
		if got := order.String(); got != tc.want {
			t.Errorf("lanes %v: served %q, want %q", tc.queued, got, tc.want)
		}
		if p.free != 1 || len(p.ring) != 0 {
			t.Errorf("lanes %v: pool left with %d free, %d lanes queued", tc.queued, p.free, len(p.ring))
		}
	}
}

func TestPoolWaiterGivesUp(t *testing.T) {
	p := NewPool(1)
	hold := make(chan struct{})
	done := make(chan struct{})
	go func() { _ = p.Do(context.Background(), func() { <-hold }); close(done) }()
	waitBusy(p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	ran := false
	if err := p.Lane().Do(ctx, func() { ran = true }); !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Fatalf("gave up: err %v, ran %v", err, ran)
	}
	close(hold)
	<-done
	// The worker is free again and nobody is left queued.
	if err := p.Do(context.Background(), func() { ran = true }); err != nil || !ran {
		t.Fatalf("after: %v %v", err, ran)
	}
	if p.free != 1 || len(p.ring) != 0 {
		t.Fatalf("pool left with %d free, %d lanes queued", p.free, len(p.ring))
	}
}

// TestPoolUnderLoad: many lanes, many tasks, random give-ups; at no time do
// more tasks run than workers, and every worker comes back.
func TestPoolUnderLoad(t *testing.T) {
	p := NewPool(3)
	var running, peak int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 20 {
		l := p.Lane()
		wg.Go(func() {
			for j := range 200 {
				ctx, cancel := context.WithCancel(context.Background())
				if (i+j)%7 == 0 {
					cancel()
				}
				_ = l.Do(ctx, func() {
					mu.Lock()
					running++
					peak = max(peak, running)
					mu.Unlock()
					time.Sleep(time.Microsecond)
					mu.Lock()
					running--
					mu.Unlock()
				})
				cancel()
			}
		})
	}
	wg.Wait()
	if peak > 3 || peak < 2 {
		t.Fatalf("peak %d tasks at once on 3 workers", peak)
	}
	if p.free != 3 || len(p.ring) != 0 {
		t.Fatalf("pool left with %d free, %d lanes queued", p.free, len(p.ring))
	}
}
