package shard

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sort"
)

// Mode says how an epoch's samples are divided among ranks.
type Mode int

const (
	// Even gives every rank the same count, ceil(N/W); the shortfall is padded
	// by repeating samples from the start of the epoch's order, and marked.
	Even Mode = iota
	// Exact gives every sample to exactly one rank; counts differ by at most one.
	Exact
)

func (m Mode) String() string {
	if m == Exact {
		return "exact"
	}
	return "even"
}

// EpochPlan is the order of one epoch's samples and their division among
// ranks. It is a pure function of (block row counts, shuffle, epoch, world
// size, mode): every node that computes it gets the same plan.
//
// The order: blocks are permuted (seeded by seed and epoch), which lays every
// sample at a position 0..N-1 of one global sequence. Rank r takes a contiguous
// range of positions — contiguous so that each rank reads whole blocks — and
// its samples are shuffled again within windows of WindowRows.
type EpochPlan struct {
	order   []int   // permuted block indices
	starts  []int64 // starts[i]: position of block order[i]'s first row; len(order)+1
	total   int64
	world   int
	mode    Mode
	shuffle *Shuffle
	epoch   int64
	// window is the window length when the shuffle names none (or there is
	// no shuffle); 0 means DefaultWindowRows. Datasets of large rows use
	// shorter windows: a window's blocks are read ahead together.
	window int64
}

// NewEpochPlan computes an epoch plan.
func NewEpochPlan(blockRows []int64, shuffle *Shuffle, epoch int64, world int, mode Mode) (*EpochPlan, error) {
	if world < 1 {
		return nil, Invalidf("world size %d < 1", world)
	}
	if epoch < 0 {
		return nil, Invalidf("epoch %d < 0", epoch)
	}
	if mode != Even && mode != Exact {
		return nil, Invalidf("unknown shard mode %d", mode)
	}
	p := &EpochPlan{order: make([]int, len(blockRows)), world: world, mode: mode, shuffle: shuffle, epoch: epoch}
	for i := range p.order {
		p.order[i] = i
	}
	if shuffle != nil {
		rng := newRNG(shuffle.Seed, uint64(epoch), streamBlocks, 0)
		for i := len(p.order) - 1; i > 0; i-- {
			j := int(rng.below(uint64(i + 1)))
			p.order[i], p.order[j] = p.order[j], p.order[i]
		}
	}
	p.starts = make([]int64, len(p.order)+1)
	for i, b := range p.order {
		if blockRows[b] < 0 {
			return nil, Invalidf("block %d has %d rows", b, blockRows[b])
		}
		p.starts[i+1] = p.starts[i] + blockRows[b]
	}
	p.total = p.starts[len(p.order)]
	return p, nil
}

// Total is the number of distinct samples in the epoch.
func (p *EpochPlan) Total() int64 { return p.total }

// Rank returns rank r's share of the epoch.
func (p *EpochPlan) Rank(r int) (*RankPlan, error) {
	if r < 0 || r >= p.world {
		return nil, Invalidf("rank %d is outside world size %d", r, p.world)
	}
	n, w := p.total, int64(p.world)
	rp := &RankPlan{plan: p, rank: r}
	switch p.mode {
	case Exact:
		base, extra := n/w, n%w
		rp.start = int64(r)*base + min(int64(r), extra)
		rp.real = base
		if int64(r) < extra {
			rp.real++
		}
		rp.count = rp.real
	case Even:
		c := (n + w - 1) / w
		rp.start = int64(r) * c
		rp.count = c
		rp.real = max(0, min(c, n-rp.start))
	}
	return rp, nil
}

// RankPlan is one rank's samples for one epoch, numbered 0..Len()-1.
type RankPlan struct {
	plan  *EpochPlan
	rank  int
	start int64 // first global position
	real  int64 // samples that are not padding
	count int64 // samples, padding included
}

// Len is the number of samples, padding included.
func (rp *RankPlan) Len() int64 { return rp.count }

// Padding is the number of trailing samples that repeat others (Even mode).
func (rp *RankPlan) Padding() int64 { return rp.count - rp.real }

// WindowRows is the window length of this plan (the shuffle window, or a
// fixed span when unshuffled).
func (rp *RankPlan) WindowRows() int64 { return rp.plan.windowRows() }

// windowRows is the shuffle's window, else the plan's, else the default.
func (p *EpochPlan) windowRows() int64 {
	if p.shuffle != nil && p.shuffle.WindowRows > 0 {
		return p.shuffle.WindowRows
	}
	if p.window > 0 {
		return p.window
	}
	return DefaultWindowRows
}

// Segment is a run of consecutive rows of one block.
type Segment struct {
	Block  int   // index into the dataset's blocks
	Lo, Hi int64 // rows [Lo, Hi) of the block
}

// Window is a run of a rank's samples. Its rows are those of Segments
// concatenated (call that W); sample First+k is row Perm[k] of W, or row k
// when Perm is nil.
type Window struct {
	First    int64
	Len      int64
	Segments []Segment
	Perm     []int32
	Padding  bool // every sample in it repeats one from earlier in the epoch
}

// Window returns the window that holds sample k (0 <= k < Len()). Windows
// tile the rank's samples: the real samples in steps of WindowRows, then the
// padding in steps of WindowRows.
func (rp *RankPlan) Window(k int64) (Window, error) {
	if k < 0 || k >= rp.count {
		return Window{}, Invalidf("sample %d is outside rank %d's %d samples", k, rp.rank, rp.count)
	}
	wr := rp.WindowRows()
	var w Window
	if k < rp.real {
		w.First = k / wr * wr
		w.Len = min(wr, rp.real-w.First)
	} else {
		w.Padding = true
		w.First = rp.real + (k-rp.real)/wr*wr
		w.Len = min(wr, rp.count-w.First)
	}
	w.Segments = rp.plan.segments(rp.start+w.First, w.Len)
	if rp.plan.shuffle != nil && !w.Padding && w.Len > 1 {
		rng := newRNG(rp.plan.shuffle.Seed, uint64(rp.plan.epoch), streamRows, uint64(rp.rank)<<32^uint64(w.First/wr))
		w.Perm = make([]int32, w.Len)
		for i := range w.Perm {
			w.Perm[i] = int32(i)
		}
		for i := len(w.Perm) - 1; i > 0; i-- {
			j := int(rng.below(uint64(i + 1)))
			w.Perm[i], w.Perm[j] = w.Perm[j], w.Perm[i]
		}
	}
	return w, nil
}

// segments covers global positions [from, from+n) (taken modulo the total,
// for padding) with runs of block rows.
func (p *EpochPlan) segments(from, n int64) []Segment {
	var out []Segment
	for n > 0 && p.total > 0 {
		pos := from % p.total
		// The block whose range holds pos; empty blocks have equal starts and
		// are passed over.
		i := sort.Search(len(p.order), func(i int) bool { return p.starts[i+1] > pos })
		lo := pos - p.starts[i]
		take := min(n, p.starts[i+1]-pos)
		out = append(out, Segment{Block: p.order[i], Lo: lo, Hi: lo + take})
		from += take
		n -= take
	}
	return out
}

// String describes the rank's share, for logs.
func (rp *RankPlan) String() string {
	return fmt.Sprintf("rank %d/%d %s: %d samples (%d padding) from position %d of %d",
		rp.rank, rp.plan.world, rp.plan.mode, rp.count, rp.Padding(), rp.start, rp.plan.total)
}

// Streams of randomness: each use has its own, so they never correlate.
const (
	streamBlocks = 1
	streamRows   = 2
)

// rng is splitmix64: tiny, fast, fully specified, so a seed gives the same
// sequence on every platform and Go version (math/rand makes no such promise
// for its derived functions).
type rng struct{ s uint64 }

func newRNG(seed, epoch, stream, sub uint64) *rng {
	var buf [32]byte
	binary.LittleEndian.PutUint64(buf[0:], seed)
	binary.LittleEndian.PutUint64(buf[8:], epoch)
	binary.LittleEndian.PutUint64(buf[16:], stream)
	binary.LittleEndian.PutUint64(buf[24:], sub)
	// Mix the words together with splitmix's finalizer, so nearby seeds diverge.
	r := &rng{}
	for i := 0; i < 4; i++ {
		r.s ^= binary.LittleEndian.Uint64(buf[i*8:])
		r.next()
	}
	return r
}

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// below returns a uniform value in [0, n) (Lemire's method, unbiased).
func (r *rng) below(n uint64) uint64 {
	hi, lo := bits.Mul64(r.next(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(r.next(), n)
		}
	}
	return hi
}
