package prefetch

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/compute"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func TestSizeClasses(t *testing.T) {
	for _, tc := range []struct{ size, class int }{
		{1, 64}, {64, 64}, {65, 128}, {4096, 4096}, {32 << 10, 32 << 10},
		{32<<10 + 1, 40 << 10}, {40 << 10, 40 << 10}, {41 << 10, 48 << 10}, {64 << 10, 64 << 10},
		{64<<10 + 1, 80 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1<<18}, {1 << 30, 1 << 30},
		{1<<30 + 1, 1<<30 + 1}, // above the largest class: exact, not pooled
	} {
		idx, cs := class(tc.size)
		if cs != tc.class {
			t.Errorf("class(%d) = %d, want %d", tc.size, cs, tc.class)
		}
		if back, _ := class(cs); tc.size <= 1<<30 && (idx < 0 || idx >= numClasses || back != idx) {
			t.Errorf("class(%d): index %d, class(%d) = %d", tc.size, idx, cs, back)
		}
	}
	// Every class is distinct and increasing, and waste is at most a quarter
	// above 32 KiB.
	prev := 0
	for size := 1; size < 1<<30; size = size*9/8 + 1 {
		_, cs := class(size)
		if cs < size || (size > 32<<10 && float64(cs) > 1.25*float64(size)+1) {
			t.Fatalf("class(%d) = %d", size, cs)
		}
		if cs < prev {
			t.Fatalf("classes decrease at %d", size)
		}
		prev = cs
	}
}

// TestMemoryReusesZeroedAlignedBuffers: freed buffers come back zeroed,
// 64-byte aligned, with len == cap as Arrow's kernels expect, and counted
// exactly.
func TestMemoryReusesZeroedAlignedBuffers(t *testing.T) {
	m := newMemory(64<<20, 64<<20)
	for _, size := range []int{1, 100, 4000, 50_000, 1 << 20, 3<<20 + 5} {
		idle := m.Stats().Idle
		b := m.Allocate(size)
		_, cs := class(size)
		if len(b) != size || cap(b) != size || m.Stats().InUse != int64(cs) {
			t.Fatalf("size %d: len %d cap %d in use %d", size, len(b), cap(b), m.Stats().InUse)
		}
		for i := range b {
			b[i] = 0xff
		}
		m.Free(b)
		if st := m.Stats(); st.InUse != 0 || st.Idle != idle+int64(cs) {
			t.Fatalf("size %d freed: %+v", size, st)
		}
		c := m.Allocate(size)
		if &c[0] != &b[0] {
			t.Fatalf("size %d: a freed buffer was not reused", size)
		}
		for i, v := range c {
			if v != 0 {
				t.Fatalf("size %d: byte %d is %#x after reuse", size, i, v)
			}
		}
		if uintptr(unsafe.Pointer(&c[0]))%64 != 0 {
			t.Fatalf("size %d: not 64-byte aligned", size)
		}
		// Growing within the class keeps the buffer and zeroes the new part,
		// whatever a previous user left there.
		if size < cs {
			full, _ := whole(c)
			c[len(c)-1] = 1
			full[len(c)] = 0xee
			g := m.Reallocate(len(c)+1, c)
			if &g[0] != &c[0] || len(g) != cap(g) || g[len(g)-1] != 0 || g[len(c)-1] != 1 {
				t.Fatalf("size %d: reallocation within the class", size)
			}
			c = g
		}
		// Shrinking out of the class moves it, so the class stays known.
		s := m.Reallocate(1, c)
		if len(s) != 1 || cap(s) != 1 || m.Stats().InUse != 64 {
			t.Fatalf("size %d: shrunk to 1: cap %d, in use %d", size, cap(s), m.Stats().InUse)
		}
		m.Free(s)
	}
	if st := m.Stats(); st.InUse != 0 || st.Reused == 0 {
		t.Fatalf("%+v", st)
	}
}

// TestMemoryTakeStrings: Arrow's Take on strings, taking longer ones than
// the average (its output outgrows its first estimate, and the kernel then
// writes up to the buffer's cap: it crashed when buffers had room past their
// length), gives the rows asked for.
func TestMemoryTakeStrings(t *testing.T) {
	m := newMemory(64<<20, 64<<20)
	checked := memory.NewCheckedAllocator(m)
	defer checked.AssertSize(t, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		n := 1 + rng.IntN(3000)
		b := array.NewStringBuilder(checked)
		want := make([]string, n)
		var long []int
		for i := range want {
			want[i] = strconv.Itoa(i)
			if i%2 == 0 {
				want[i] += strings.Repeat("x", 20+rng.IntN(40))
				long = append(long, i)
			}
			b.Append(want[i])
		}
		arr := b.NewStringArray()
		b.Release()
		idx := make([]int, n)
		for k := range idx {
			idx[k] = long[rng.IntN(len(long))]
		}
		ib := array.NewInt32Builder(checked)
		for _, i := range idx {
			ib.Append(int32(i))
		}
		ia := ib.NewInt32Array()
		ib.Release()
		out, err := compute.TakeArray(compute.WithAllocator(context.Background(), checked), arr, ia)
		if err != nil {
			t.Fatal(err)
		}
		got := out.(*array.String)
		for k, i := range idx {
			if got.Value(k) != want[i] {
				t.Fatalf("round %d: row %d is %q, want %q", round, k, got.Value(k), want[i])
			}
		}
		out.Release()
		ia.Release()
		arr.Release()
	}
}

// TestMemoryKeepsIdleWithinBudget: idle buffers never push what the memory
// holds past its limit; they are dropped to make room for fresh ones.
func TestMemoryKeepsIdleWithinBudget(t *testing.T) {
	m := newMemory(1<<20, 1<<20)
	var held [][]byte
	for range 12 {
		held = append(held, m.Allocate(100<<10)) // 12 × 112 KiB: over the limit
	}
	for _, b := range held {
		m.Free(b)
	}
	st := m.Stats()
	if st.InUse != 0 || st.Idle > st.Limit {
		t.Fatalf("after freeing: %+v", st)
	}
	// A fresh allocation of another class drops idle buffers to fit.
	b := m.Allocate(700 << 10)
	if st := m.Stats(); st.InUse+st.Idle > st.Limit {
		t.Fatalf("fresh buffer beside idle ones: %+v", st)
	}
	m.Free(b)
	m.Charge(900 << 10)
	if st := m.Stats(); st.Charged+st.Idle > st.Limit {
		t.Fatalf("charged beside idle ones: %+v", st)
	}
	m.Charge(-(900 << 10))
}

// TestMemoryAsArrowAllocator builds and frees Arrow arrays from many
// goroutines, checked by Arrow's own allocator checker on top.
func TestMemoryAsArrowAllocator(t *testing.T) {
	m := newMemory(256<<20, 256<<20)
	checked := memory.NewCheckedAllocator(m)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for range 50 {
				n := rng.IntN(20_000)
				b := array.NewInt64Builder(checked)
				s := array.NewStringBuilder(checked)
				for i := range n {
					b.Append(int64(i))
					s.Append("x")
				}
				a, sa := b.NewInt64Array(), s.NewStringArray()
				b.Release()
				s.Release()
				for i := 0; i < n; i += 101 {
					if a.Value(i) != int64(i) || sa.Value(i) != "x" {
						t.Errorf("array corrupt at %d", i)
					}
				}
				a.Release()
				sa.Release()
			}
		})
	}
	wg.Wait()
	checked.AssertSize(t, 0)
	if st := m.Stats(); st.InUse != 0 || st.Reused == 0 {
		t.Fatalf("%+v", st)
	}
}

func TestMemoryReserve(t *testing.T) {
	ctx := context.Background()
	m := newMemory(1000, 1000)
	if err := m.Reserve(ctx, 600, nil); err != nil {
		t.Fatal(err)
	}
	// The next does not fit: it waits until the first is returned.
	got := make(chan error, 1)
	go func() { got <- m.Reserve(ctx, 600, nil) }()
	waitMemQueued(m, 1)
	select {
	case err := <-got:
		t.Fatalf("over-budget reservation granted (%v)", err)
	default:
	}
	m.Unreserve(600)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// In use counts too: with 600 reserved and 300 allocated, 200 must wait
	// until a buffer is freed.
	b := m.Allocate(300) // class 512
	go func() { got <- m.Reserve(ctx, 200, nil) }()
	waitMemQueued(m, 1)
	m.Free(b) // the idle buffer does not count
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	m.Unreserve(800)

	// First come, first served: a small request that would fit does not
	// pass a large one that does not.
	if err := m.Reserve(ctx, 600, nil); err != nil {
		t.Fatal(err)
	}
	large, small := make(chan error, 1), make(chan error, 1)
	go func() { large <- m.Reserve(ctx, 500, nil) }()
	waitMemQueued(m, 1)
	go func() { small <- m.Reserve(ctx, 50, nil) }()
	waitMemQueued(m, 2)
	select {
	case err := <-small:
		t.Fatalf("a small request passed a large one waiting before it (%v)", err)
	case <-time.After(5 * time.Millisecond):
	}
	m.Unreserve(600)
	if <-large != nil || <-small != nil {
		t.Fatal("not granted")
	}
	m.Unreserve(550)

	// An urgent request (its consumer waits with nothing ready) passes at
	// once, over the budget; one that becomes urgent later goes when told.
	if err := m.Reserve(ctx, 900, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Reserve(ctx, 900, func() bool { return true }); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	urgent := false
	go func() {
		got <- m.Reserve(ctx, 100, func() bool { mu.Lock(); defer mu.Unlock(); return urgent })
	}()
	waitMemQueued(m, 1)
	mu.Lock()
	urgent = true
	mu.Unlock()
	m.Wake()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	m.Unreserve(1900)

	// Giving up returns nothing reserved and lets the next in.
	if err := m.Reserve(ctx, 1000, nil); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	defer cancel()
	if err := m.Reserve(cctx, 10, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("gave up: %v", err)
	}
	m.Unreserve(1000)
	if st := m.Stats(); st.Reserved != 0 || st.Waited == 0 || len(m.queue) != 0 {
		t.Fatalf("%+v", st)
	}
}

func waitMemQueued(m *Memory, n int) {
	for {
		m.mu.Lock()
		q := len(m.queue)
		m.mu.Unlock()
		if q >= n {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// TestChargeOffHeapLowersRuntimeLimit: memory outside the Go heap (shm
// rings) takes its room from the heap's limit, down to the runtime's share,
// and gives it back.
func TestChargeOffHeapLowersRuntimeLimit(t *testing.T) {
	m := NewMemory(400 << 20)
	var limits []int64
	m.SetRuntimeLimit(func(n int64) int64 { limits = append(limits, n); return 0 })
	m.ChargeOffHeap(100 << 20)
	m.ChargeOffHeap(250 << 20) // 350 MiB off-heap: the heap keeps its quarter
	m.ChargeOffHeap(-(350 << 20))
	want := []int64{400 << 20, 300 << 20, 100 << 20, 400 << 20}
	if !slices.Equal(limits, want) {
		t.Fatalf("runtime limits %v, want %v", limits, want)
	}
	if st := m.Stats(); st.Charged != 0 {
		t.Fatalf("charged %d after the rings are gone", st.Charged)
	}
}
