package shm

import (
	"cmp"
	"slices"
)

// extent is one slot's place in the data area: [off, off+n), off relative
// to the data area, n rounded up to the alignment.
type extent struct {
	key  int64 // the batch's sequence number
	off  int64
	n    int64
	slot int
}

// allocator places variable-size slots in a circular data area. It is a
// ring in the common case (next fit: each slot goes right after the last
// one, wrapping at the end, so the area is written in order) and a plain
// first-fit allocator when the client releases batches out of order: any
// released extent can be reused at once, so one batch the client keeps does
// not hold back the reuse of all later ones, as it would in a strict FIFO
// ring. Pure bookkeeping, no memory: Ring owns the bytes and the locking.
type allocator struct {
	size  int64
	align int64
	live  []extent // sorted by off; at most len(slot indices) long
	next  int64    // where the last allocation ended
	free  []int    // slot indices not in use
	used  int64
}

func newAllocator(size int64, align int64, slots int) *allocator {
	a := &allocator{size: size, align: align, free: make([]int, slots)}
	for i := range a.free {
		a.free[i] = slots - 1 - i // pop from the end: slot 0 first
	}
	return a
}

func (a *allocator) round(n int64) int64 { return (n + a.align - 1) / a.align * a.align }

// fits reports whether n bytes could ever be allocated (with the area empty).
func (a *allocator) fits(n int64) bool { return n > 0 && a.round(n) <= a.size }

// alloc places n bytes under key, or reports that no free extent is large
// enough or no slot index is free now.
func (a *allocator) alloc(key, n int64) (extent, bool) {
	n = a.round(n)
	if n <= 0 || n > a.size || len(a.free) == 0 {
		return extent{}, false
	}
	off, ok := a.place(n)
	if !ok {
		return extent{}, false
	}
	e := extent{key: key, off: off, n: n, slot: a.free[len(a.free)-1]}
	a.free = a.free[:len(a.free)-1]
	i, _ := slices.BinarySearchFunc(a.live, off, func(x extent, o int64) int { return cmp.Compare(x.off, o) })
	a.live = slices.Insert(a.live, i, e)
	a.next = off + n
	if a.next == a.size {
		a.next = 0
	}
	a.used += n
	return e, true
}

// place finds where n bytes go: the first gap, in ring order from next on,
// that holds them.
func (a *allocator) place(n int64) (int64, bool) {
	if len(a.live) == 0 {
		return 0, true // empty: start over at the beginning, the whole area is one gap
	}
	type gap struct{ lo, hi int64 }
	gaps := make([]gap, 0, len(a.live)+1)
	if first := a.live[0].off; first > 0 {
		gaps = append(gaps, gap{0, first})
	}
	for i, e := range a.live {
		end := a.size
		if i+1 < len(a.live) {
			end = a.live[i+1].off
		}
		if hi := end; e.off+e.n < hi {
			gaps = append(gaps, gap{e.off + e.n, hi})
		}
	}
	if len(gaps) == 0 {
		return 0, false
	}
	// Start at the gap holding next (or the first after it); try its part
	// from next on first, the whole of it last.
	start := len(gaps)
	for i, g := range gaps {
		if g.hi > a.next {
			start = i
			break
		}
	}
	for k := 0; k <= len(gaps); k++ {
		g := gaps[(start+k)%len(gaps)]
		lo := g.lo
		if k == 0 && a.next > lo && a.next < g.hi {
			lo = a.next
		}
		if g.hi-lo >= n {
			return lo, true
		}
	}
	return 0, false
}

// release frees key's extent; false if key holds none.
func (a *allocator) release(key int64) (extent, bool) {
	for i, e := range a.live {
		if e.key == key {
			a.live = slices.Delete(a.live, i, i+1)
			a.free = append(a.free, e.slot)
			a.used -= e.n
			return e, true
		}
	}
	return extent{}, false
}
