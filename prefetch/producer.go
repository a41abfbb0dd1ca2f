package prefetch

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/loaderd/loaderd/shard"
)

// run owns the stream's work: a fetcher that walks the plan's windows and asks
// for their blocks, ReadAhead readers that read them through the shared pool,
// and the assembler (this goroutine) that turns windows into batches.
func (p *producer) run(ctx context.Context) {
	defer close(p.s.out)
	if p.from >= p.plan.Len() {
		return
	}
	// Windows are cheap to queue (a permutation at most); blocks are not, and
	// the readahead bound counts those.
	jobs := make(chan job, 64)
	reqs := make(chan *future, p.opts.ReadAhead)
	p.ahead = newGauge()
	fctx, fcancel := context.WithCancel(ctx)
	stopGauge := context.AfterFunc(fctx, p.ahead.close)
	defer stopGauge()
	var wg sync.WaitGroup
	wg.Go(func() { p.fetch(fctx, jobs, reqs) })
	for range p.opts.ReadAhead {
		wg.Go(func() { p.read(fctx, reqs) })
	}
	err := p.assemble(ctx, jobs)
	fcancel()
	wg.Wait()
	// Whatever was read ahead and not used.
	for j := range jobs {
		for _, f := range j.futures {
			f.release()
		}
		p.assembled(&j)
	}
	if err != nil && ctx.Err() == nil {
		p.s.out <- item{err: err} // the queue has room: nothing was sent after the error
	}
}

// fetch walks the windows from the start sample on. A window's first segment
// that continues the previous window's last block gets no future: the
// assembler still holds that block. Before a window's blocks are asked for,
// fewer than ReadAhead blocks may be read and not yet released, and the
// memory budget must have room for what decoding them will take; a window's
// blocks are then asked for together, so the assembler never waits for a
// block the fetcher holds back, and every admitted read runs to its end
// without waiting for memory again (no reader can wait on another).
func (p *producer) fetch(ctx context.Context, jobs chan<- job, reqs chan<- *future) {
	defer close(jobs)
	defer close(reqs)
	prevLast := -1
	for k := p.from; k < p.plan.Len(); {
		w, err := p.plan.Window(k)
		if err != nil {
			panic(fmt.Sprintf("prefetch: plan has no window at %d of %d: %v", k, p.plan.Len(), err))
		}
		if w.First+w.Len >= p.plan.Len() && p.onLast != nil {
			p.onLast()
		}
		j := job{w: w, futures: make([]*future, len(w.Segments))}
		n := 0
		var est int64
		for i, seg := range w.Segments {
			if i == 0 && seg.Block == prevLast {
				continue
			}
			f := &future{block: seg.Block, done: make(chan struct{}), ahead: p.ahead}
			if p.opts.Memory != nil {
				f.est = p.estimate(seg.Block)
				est += f.est
			}
			j.futures[i] = f
			n++
		}
		if n > 0 && !p.ahead.acquire(p.opts.ReadAhead, n) {
			return
		}
		if p.opts.Memory != nil {
			// What assembling the window makes: its rows gathered (shuffled:
			// concatenated, then taken in order) and cut into batches.
			copies := int64(1)
			if w.Perm != nil {
				copies = 2
			}
			j.products = w.Len * p.rowBytes.Load() * copies
		}
		if est+j.products > 0 {
			if p.opts.Memory.Reserve(ctx, est+j.products, p.s.starving) != nil {
				return
			}
			p.s.inflight.Add(est)
		}
		select {
		case jobs <- j:
		case <-ctx.Done():
			p.unreserve(j.futures)
			p.assembled(&j)
			return
		}
		for i, f := range j.futures {
			if f == nil {
				continue
			}
			select {
			case reqs <- f:
			case <-ctx.Done():
				p.unreserve(j.futures[i:])
				return
			}
		}
		if n := len(w.Segments); n > 0 {
			prevLast = w.Segments[n-1].Block
		}
		k = w.First + w.Len
	}
}

// estimate guesses the bytes that decoding a block will hold.
func (p *producer) estimate(block int) int64 {
	r := p.ratio.Load()
	if p.sizer == nil {
		return r // bytes per block
	}
	if r == 0 {
		r = 1 << 10 // decoded the stored size, until one is seen
	}
	return p.sizer.BlockBytes(block) * r >> 10
}

// learn updates the estimates from a decoded block: they follow increases
// at once and decreases slowly, so reservations err on the large side.
func (p *producer) learn(block int, rec arrow.RecordBatch) {
	size := shard.RecordBytes(rec)
	if rows := rec.NumRows(); rows > 0 {
		old := p.rowBytes.Load()
		p.rowBytes.Store(max((size+rows-1)/rows, old-old/8))
	}
	obs := size
	if p.sizer != nil {
		stored := p.sizer.BlockBytes(block)
		if stored <= 0 {
			return
		}
		obs = size << 10 / stored
	}
	old := p.ratio.Load()
	p.ratio.Store(max(obs, old-old/8))
}

// assembled returns a job's reservation for what assembling it makes: once
// made, those bytes are in use and counted as such.
func (p *producer) assembled(j *job) {
	if j.products > 0 {
		p.opts.Memory.Unreserve(j.products)
		j.products = 0
	}
}

// unreserve returns the reservations of futures no reader will see.
func (p *producer) unreserve(fs []*future) {
	for _, f := range fs {
		if f != nil && f.est > 0 {
			p.opts.Memory.Unreserve(f.est)
			if p.s.inflight.Add(-f.est) == 0 && p.s.waiting.Load() {
				p.opts.Memory.Wake() // our next window may go now
			}
			f.est = 0
		}
	}
}

func (p *producer) read(ctx context.Context, reqs <-chan *future) {
	for f := range reqs {
		var rec arrow.RecordBatch
		var rerr error
		t0 := time.Now()
		err := p.opts.Lane.Do(ctx, func() {
			defer func() {
				if r := recover(); r != nil {
					rerr = fmt.Errorf("prefetch: reading block %d panicked: %v", f.block, r)
				}
			}()
			rec, rerr = p.src.ReadBlock(ctx, f.block, p.opts.Mem)
		})
		if err != nil {
			rerr = err
		} else {
			p.s.metrics.observeBlock(time.Since(t0))
		}
		if rec != nil && p.opts.Memory != nil {
			p.learn(f.block, rec)
		}
		p.unreserve([]*future{f})
		f.finish(rec, rerr)
	}
}

// finish records a read's result, or releases it at once when the future
// was given up while it was being read (the assembler stopped on an error in
// the same window): nobody else would.
func (f *future) finish(rec arrow.RecordBatch, err error) {
	f.mu.Lock()
	orphan := f.released
	if !orphan {
		f.rec, f.err = rec, err
	}
	f.mu.Unlock()
	if orphan && rec != nil {
		rec.Release()
	}
	close(f.done)
}

func (f *future) release() {
	if f == nil {
		return
	}
	f.mu.Lock()
	if f.released {
		f.mu.Unlock()
		return
	}
	f.released = true
	rec := f.rec // nil while being read: finish releases it then
	f.rec = nil
	f.mu.Unlock()
	f.ahead.release(1)
	if rec != nil {
		rec.Release()
	}
}

// gauge counts blocks asked for and not yet released.
type gauge struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n      int
	closed bool
}

func newGauge() *gauge {
	g := &gauge{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// acquire waits until fewer than limit are out, then takes n; false once
// closed.
func (g *gauge) acquire(limit, n int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.n >= limit && !g.closed {
		g.cond.Wait()
	}
	g.n += n
	return !g.closed
}

func (g *gauge) release(n int) {
	g.mu.Lock()
	g.n -= n
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *gauge) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cond.Broadcast()
}

// assemble turns windows into batches, in plan order.
func (p *producer) assemble(ctx context.Context, jobs <-chan job) error {
	var held *future
	var cur *job // the window in hand: released on every way out
	defer func() {
		if cur != nil {
			for _, f := range cur.futures {
				f.release()
			}
			p.assembled(cur)
		}
		held.release()
	}()
	b := &batcher{ctx: ctx, opts: &p.opts, images: p.images, emit: func(bt *Batch) error {
		select {
		case p.s.out <- item{b: bt}:
			return nil
		case <-ctx.Done():
			bt.Record.Release()
			return ctx.Err()
		}
	}}
	defer b.release()
	for {
		var j job
		var ok bool
		select {
		case j, ok = <-jobs:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			break
		}
		futs := make([]*future, len(j.futures))
		cur = &j
		for i, f := range j.futures {
			if f == nil {
				f = held
			}
			futs[i] = f
			select {
			case <-f.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if f.err != nil && j.futures[i] != nil {
				var ie *shard.InputError
				if p.opts.OnError != shard.Skip || !errors.As(f.err, &ie) {
					return f.err
				}
				p.s.skipped.Add(1)
				p.opts.Logger.Warn("skipping bad block", "err", f.err)
			}
		}
		err := p.window(j.w, futs, b)
		p.assembled(&j)
		// Keep the window's last block: the next window may continue it.
		last := futs[len(futs)-1]
		for _, f := range futs {
			if f != last {
				f.release()
			}
		}
		if held != last {
			held.release()
		}
		held, cur = last, nil
		if err != nil {
			return err
		}
	}
	return b.flush(true)
}

// window hands the batcher the window's rows in plan order, from the start
// sample on, leaving out the rows of skipped blocks.
func (p *producer) window(w shard.Window, futs []*future, b *batcher) error {
	skip := max(0, p.from-w.First) // samples before the start, in the first window
	// offs[i]: window-local index of segment i's first row.
	offs := make([]int64, len(w.Segments)+1)
	for i, s := range w.Segments {
		offs[i+1] = offs[i] + s.Hi - s.Lo
	}
	if w.Perm == nil {
		for i, s := range w.Segments {
			lo, hi := max(offs[i], skip), offs[i+1]
			if lo >= hi || futs[i].rec == nil {
				continue
			}
			rec := futs[i].rec.NewSlice(s.Lo+lo-offs[i], s.Lo+hi-offs[i])
			planned := make([]int64, hi-lo)
			for t := range planned {
				planned[t] = w.First + lo + int64(t)
			}
			var refs []rowRef
			if p.images != nil {
				refs = make([]rowRef, hi-lo)
				for t := range refs {
					refs[t] = rowRef{block: s.Block, row: s.Lo + lo - offs[i] + int64(t)}
				}
			}
			if err := b.add(piece{rec: rec, planned: planned, refs: refs, padding: w.Padding}); err != nil {
				return err
			}
		}
		return nil
	}
	// Shuffled: concatenate the window's rows, then take them in Perm order.
	var parts []arrow.RecordBatch
	woff := make([]int64, len(w.Segments)) // row of W where segment i starts; -1 if skipped
	var n int64
	for i, s := range w.Segments {
		if futs[i].rec == nil {
			woff[i] = -1
			continue
		}
		woff[i] = n
		n += s.Hi - s.Lo
		parts = append(parts, futs[i].rec.NewSlice(s.Lo, s.Hi))
	}
	if len(parts) == 0 {
		return nil
	}
	whole, err := concatRecords(parts, p.opts.Mem)
	for _, r := range parts {
		r.Release()
	}
	if err != nil {
		return err
	}
	idx := make([]int32, 0, w.Len-skip)
	planned := make([]int64, 0, w.Len-skip)
	var refs []rowRef
	for t := skip; t < w.Len; t++ {
		src := int64(w.Perm[t])
		i := sort.Search(len(w.Segments), func(i int) bool { return offs[i+1] > src })
		if woff[i] < 0 {
			continue
		}
		idx = append(idx, int32(woff[i]+src-offs[i]))
		planned = append(planned, w.First+t)
		if p.images != nil {
			refs = append(refs, rowRef{block: w.Segments[i].Block, row: w.Segments[i].Lo + src - offs[i]})
		}
	}
	return b.add(piece{rec: whole, idx: idx, planned: planned, refs: refs, padding: w.Padding})
}
