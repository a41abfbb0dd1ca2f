package prefetch

import (
	"context"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Memory is the daemon's memory budget. It is the Arrow allocator of every
// block, window and batch, so it knows to the byte what they hold; it keeps
// freed buffers in size classes and hands them out again, because writing
// into memory already in use is far faster than into fresh memory; and it is
// the gate that new reads wait at while the budget is spent.
//
// What it counts: bytes handed out and not yet freed (in use), freed buffers
// kept for reuse (idle), and bytes held outside Arrow that their owners
// Charge (encode buffers, raw cached chunks). Idle buffers are dropped first
// when memory is short; new reads wait at Reserve while in use + charged
// leaves no room, and what a stream holds besides is bounded by its queue
// and read-ahead.
//
// Safe for concurrent use.
type Memory struct {
	budget int64
	limit  int64 // for Arrow data and charged bytes: the budget less the runtime's share

	inUse    atomic.Int64
	external atomic.Int64
	offHeap  atomic.Int64 // the part of external outside the Go heap
	offMu    sync.Mutex   // orders the runtime limits that off-heap charges set
	// runtimeLimit, when set, holds the Go heap to what the budget leaves
	// beside off-heap memory (debug.SetMemoryLimit).
	runtimeLimit func(int64) int64
	fresh        atomic.Int64 // bytes allocated from the Go heap, ever
	reused       atomic.Int64 // bytes served from idle buffers, ever
	waitNs       atomic.Int64 // time readers spent waiting in Reserve
	waiters      atomic.Int32

	mu       sync.Mutex
	idle     int64
	idleNow  atomic.Int64 // idle, readable without mu
	reserved int64
	free     [numClasses][][]byte
	queue    []*memWaiter // Reserve calls waiting, first come first served
}

type memWaiter struct {
	n      int64
	urgent func() bool
	grant  chan struct{}
}

var _ memory.Allocator = (*Memory)(nil)

// RuntimeShare is the part of the budget left to the Go runtime rather than
// counted data: garbage between collections (decoding Parquet makes several
// times its output in short-lived Go allocations), gRPC's buffers, stacks.
// The collector is held to the whole budget (debug.SetMemoryLimit, set by
// the daemon); counted data to the rest.
const RuntimeShare = 4 // one part in 4

// NewMemory returns a budget of budget bytes, of which counted data may use
// all but a RuntimeShare.
func NewMemory(budget int64) *Memory {
	return newMemory(budget, budget-budget/RuntimeShare)
}

func newMemory(budget, limit int64) *Memory {
	return &Memory{budget: budget, limit: max(limit, 1)}
}

// Size classes: powers of two from 64 bytes to 32 KiB (Go allocates those
// 64-byte aligned, as Arrow likes), then four classes per doubling up to
// 1 GiB (Go gives objects over 32 KiB whole pages, so they are aligned too).
// A buffer is never more than a quarter larger than asked above 32 KiB.
const (
	minClassShift = 6  // 64 B
	maxSmallShift = 15 // 32 KiB
	maxClassShift = 30 // 1 GiB
	numSmall      = maxSmallShift - minClassShift + 1
	numClasses    = numSmall + (maxClassShift-maxSmallShift)*4
)

// class returns the size class for size bytes, or -1 when size is above the
// largest class (such buffers are not kept for reuse).
func class(size int) (idx, classSize int) {
	if size <= 1<<minClassShift {
		return 0, 1 << minClassShift
	}
	e := bits.Len(uint(size - 1)) // 2^(e-1) < size <= 2^e
	if e <= maxSmallShift {
		return e - minClassShift, 1 << e
	}
	if e > maxClassShift {
		return -1, size
	}
	base := 1 << (e - 1)
	step := base / 4
	k := (size - base + step - 1) / step // 1..4
	return numSmall + (e-1-maxSmallShift)*4 + k - 1, base + k*step
}

// Buffers handed out have len == cap == the size asked for, as Go's
// allocator gives them: Arrow's kernels take cap as the room they may write
// in. The whole class-sized buffer behind one is found again from its data
// pointer and its class, which class(cap) gives for every size of the class;
// Reallocate moves a buffer that would change class, so that holds.

// Allocate implements memory.Allocator: zeroed bytes, reused when a freed
// buffer of the class is idle.
func (m *Memory) Allocate(size int) []byte {
	if size <= 0 {
		return make([]byte, 0)
	}
	idx, cs := class(size)
	if idx >= 0 {
		m.mu.Lock()
		if list := m.free[idx]; len(list) > 0 {
			b := list[len(list)-1]
			list[len(list)-1] = nil
			m.free[idx] = list[:len(list)-1]
			m.idle -= int64(cs)
			m.idleNow.Store(m.idle)
			m.mu.Unlock()
			m.inUse.Add(int64(cs))
			m.reused.Add(int64(cs))
			b = b[:size:size]
			clear(b)
			return b
		}
		// A fresh buffer: make room for it by dropping idle ones.
		m.trimLocked(int64(cs))
		m.mu.Unlock()
	}
	b := make([]byte, cs)
	m.inUse.Add(int64(cs))
	m.fresh.Add(int64(cs))
	return b[:size:size]
}

// whole returns the class-sized buffer behind b, and its class (-1 for a
// buffer above the largest class, which is b itself).
func whole(b []byte) ([]byte, int) {
	idx, cs := class(cap(b))
	if idx < 0 {
		return b[:cap(b)], -1
	}
	return unsafe.Slice(unsafe.SliceData(b), cs), idx
}

// Reallocate implements memory.Allocator: in place while the size stays in
// the buffer's class, else moved.
func (m *Memory) Reallocate(size int, b []byte) []byte {
	if cap(b) > 0 && size > 0 {
		full, idx := whole(b)
		if nidx, _ := class(size); nidx == idx && idx >= 0 {
			if size > len(b) {
				clear(full[len(b):size])
			}
			return full[:size:size]
		}
	}
	nb := m.Allocate(size)
	copy(nb, b)
	m.Free(b)
	return nb
}

// Free implements memory.Allocator. The buffer is kept for reuse while the
// budget has room for it.
func (m *Memory) Free(b []byte) {
	if cap(b) == 0 {
		return
	}
	full, idx := whole(b)
	c := int64(len(full))
	m.inUse.Add(-c)
	if idx >= 0 {
		m.mu.Lock()
		if m.used()+m.idle+c <= m.limit {
			m.free[idx] = append(m.free[idx], full)
			m.idle += c
			m.idleNow.Store(m.idle)
		}
		m.mu.Unlock()
	}
	m.wake()
}

// trimLocked drops idle buffers, largest first, until need more bytes fit.
func (m *Memory) trimLocked(need int64) {
	for i := numClasses - 1; i >= 0 && m.idle > 0 && m.used()+m.idle+need > m.limit; i-- {
		list := m.free[i]
		for len(list) > 0 && m.used()+m.idle+need > m.limit {
			b := list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			m.idle -= int64(cap(b))
		}
		m.free[i] = list
	}
	m.idleNow.Store(m.idle)
}

// used is what is held and not reusable: bytes in use plus charged bytes.
func (m *Memory) used() int64 { return m.inUse.Load() + m.external.Load() }

// Charge counts n bytes held outside the allocator (negative: no longer
// held), so that the budget covers them too.
func (m *Memory) Charge(n int64) {
	m.external.Add(n)
	if n < 0 {
		m.wake()
	} else {
		m.mu.Lock()
		m.trimLocked(0)
		m.mu.Unlock()
	}
}

// ChargeOffHeap is Charge for memory outside the Go heap (shared-memory
// rings): the Go runtime's limit, when SetRuntimeLimit gave one, shrinks by
// as much, so that heap and off-heap memory together stay within the budget.
func (m *Memory) ChargeOffHeap(n int64) {
	m.Charge(n)
	// Under offMu, limits are set in the order of the charges: the last
	// one set reflects every charge.
	m.offMu.Lock()
	defer m.offMu.Unlock()
	off := m.offHeap.Add(n)
	if m.runtimeLimit != nil {
		// The heap keeps at least the runtime's share whatever is off-heap.
		m.runtimeLimit(max(m.budget-off, m.budget/RuntimeShare))
	}
}

// SetRuntimeLimit makes the budget hold the Go runtime to it, through set
// (debug.SetMemoryLimit): to the whole budget now, less off-heap charges as
// they come. Call it before the budget is in use.
func (m *Memory) SetRuntimeLimit(set func(int64) int64) {
	m.runtimeLimit = set
	set(m.budget)
}

// Reserve waits until n more bytes fit in the budget (counting what is in
// use, charged and already reserved, but not idle buffers, which are reused
// or dropped as needed), then reserves them; the caller Unreserves them once
// what it reserved for is allocated or abandoned. Callers are served first
// come first served, except one whose urgent reports true: a consumer is
// waiting on it with nothing ready and nothing being read, so it is let
// through at once, over the budget if need be. Memory then exceeds the
// budget by at most one reservation per stalled consumer, and no consumer
// ever waits for memory that others hold: everything else waits for
// consumers to free it. Whoever makes urgent true calls Wake. Reserve returns
// ctx's error if ctx ends first.
func (m *Memory) Reserve(ctx context.Context, n int64, urgent func() bool) error {
	m.mu.Lock()
	if len(m.queue) == 0 && m.fitsLocked(n) || urgent != nil && urgent() {
		m.reserved += n
		m.mu.Unlock()
		return nil
	}
	w := &memWaiter{n: n, urgent: urgent, grant: make(chan struct{})}
	m.queue = append(m.queue, w)
	m.waiters.Add(1)
	m.mu.Unlock()
	start := time.Now()
	defer func() { m.waitNs.Add(int64(time.Since(start))) }()
	select {
	case <-w.grant:
		return nil
	case <-ctx.Done():
	}
	m.mu.Lock()
	select {
	case <-w.grant:
		m.mu.Unlock()
		m.Unreserve(n)
	default:
		for i, x := range m.queue {
			if x == w {
				m.queue = append(m.queue[:i], m.queue[i+1:]...)
				m.waiters.Add(-1)
				break
			}
		}
		m.grantLocked() // the next in line may fit now
		m.mu.Unlock()
	}
	return ctx.Err()
}

// Unreserve returns a reservation's bytes.
func (m *Memory) Unreserve(n int64) {
	m.mu.Lock()
	m.reserved -= n
	m.grantLocked()
	m.mu.Unlock()
}

func (m *Memory) fitsLocked(n int64) bool {
	return m.used()+m.reserved+n <= m.limit
}

// Wake looks at the waiting reservations again: memory was freed, or a
// consumer started waiting. It costs an atomic load when nobody waits,
// which is nearly always.
func (m *Memory) Wake() { m.wake() }

func (m *Memory) wake() {
	if m.waiters.Load() == 0 {
		return
	}
	m.mu.Lock()
	m.grantLocked()
	m.mu.Unlock()
}

func (m *Memory) grantLocked() {
	for len(m.queue) > 0 && m.fitsLocked(m.queue[0].n) {
		m.grantAtLocked(0)
	}
	for i := 0; i < len(m.queue); i++ {
		if w := m.queue[i]; w.urgent != nil && w.urgent() {
			m.grantAtLocked(i)
			i--
		}
	}
}

func (m *Memory) grantAtLocked(i int) {
	w := m.queue[i]
	m.queue = append(m.queue[:i], m.queue[i+1:]...)
	m.waiters.Add(-1)
	m.reserved += w.n
	close(w.grant)
}

// Budget is the whole budget in bytes; Limit is what counted data may use.
func (m *Memory) Budget() int64 { return m.budget }

// Limit is the part of the budget that counted data may use.
func (m *Memory) Limit() int64 { return m.limit }

// MemoryStats is a snapshot of a Memory's counters.
type MemoryStats struct {
	Budget   int64
	Limit    int64 // for counted data: Budget less RuntimeShare
	InUse    int64 // Arrow buffers handed out and not yet freed
	Idle     int64 // freed buffers kept for reuse
	Charged  int64 // bytes held outside the allocator
	Reserved int64 // reserved for reads not yet done
	// Fresh and Reused are bytes allocated from the Go heap and served from
	// idle buffers, since the start.
	Fresh, Reused int64
	// Waited is the time reads spent waiting for the budget, all together.
	Waited time.Duration
}

// Stats returns the counters.
func (m *Memory) Stats() MemoryStats {
	m.mu.Lock()
	reserved := m.reserved
	m.mu.Unlock()
	return MemoryStats{
		Budget: m.budget, Limit: m.limit, InUse: m.inUse.Load(), Idle: m.idleNow.Load(), Charged: m.external.Load(),
		Reserved: reserved, Fresh: m.fresh.Load(), Reused: m.reused.Load(),
		Waited: time.Duration(m.waitNs.Load()),
	}
}
