package prefetch

import (
	"context"
	"sync"
)

// Pool bounds how much block work (reading, decoding) runs at once across
// every session of the daemon, and shares it fairly: each session queues on a
// Lane of its own, and a free worker goes to the lanes in turn, so a session
// with a deep read-ahead cannot starve one that asks for a single block.
//
// A worker is held only while a submitted function runs: a session whose
// queue of ready batches is full submits nothing, so a stopped rank holds no
// worker. The functions run on the caller's goroutine once the pool admits
// them; the pool starts no goroutines of its own.
//
// The zero value is not usable; make one with NewPool.
type Pool struct {
	mu      sync.Mutex
	free    int
	workers int
	ring    []*Lane // lanes with waiters, in turn order
	next    int     // ring index served next
	shared  *Lane   // for Pool.Do
}

// Lane is one session's queue on a Pool. Lanes need no closing: a lane with
// nothing waiting costs nothing.
type Lane struct {
	p       *Pool
	waiting []chan struct{} // FIFO; a grant closes the channel
	queued  bool            // in p.ring
}

// NewPool returns a pool of n workers (at least 1).
func NewPool(n int) *Pool {
	p := &Pool{free: max(n, 1), workers: max(n, 1)}
	p.shared = p.Lane()
	return p
}

// Workers is the pool's size.
func (p *Pool) Workers() int { return p.workers }

// Lane returns a new lane: one per session (or per rank), so that the pool
// serves sessions in turn.
func (p *Pool) Lane() *Lane { return &Lane{p: p} }

// Do runs fn on the pool from a lane shared by every caller of Pool.Do; see
// Lane.Do.
func (p *Pool) Do(ctx context.Context, fn func()) error { return p.shared.Do(ctx, fn) }

// Do waits for a worker, in turn with the pool's other lanes, runs fn on the
// calling goroutine, and frees the worker. It returns ctx's error, without
// running fn, when ctx ends first. fn must not block on anything that needs
// the pool's workers or a consumer's progress: a worker is for work.
func (l *Lane) Do(ctx context.Context, fn func()) error {
	if err := l.acquire(ctx); err != nil {
		return err
	}
	defer l.p.release()
	fn()
	return nil
}

func (l *Lane) acquire(ctx context.Context) error {
	p := l.p
	p.mu.Lock()
	if p.free > 0 && len(p.ring) == 0 {
		p.free--
		p.mu.Unlock()
		return nil
	}
	grant := make(chan struct{})
	l.waiting = append(l.waiting, grant)
	if !l.queued {
		l.queued = true
		p.ring = append(p.ring, l)
	}
	p.grantLocked()
	p.mu.Unlock()
	select {
	case <-grant:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-grant: // granted while we gave up: pass the worker on
		p.free++
		p.grantLocked()
	default:
		l.remove(grant)
	}
	return ctx.Err()
}

func (p *Pool) release() {
	p.mu.Lock()
	p.free++
	p.grantLocked()
	p.mu.Unlock()
}

// grantLocked hands free workers to waiting lanes, one per lane in turn.
func (p *Pool) grantLocked() {
	for p.free > 0 && len(p.ring) > 0 {
		if p.next >= len(p.ring) {
			p.next = 0
		}
		l := p.ring[p.next]
		close(l.waiting[0])
		l.waiting = l.waiting[1:]
		p.free--
		if len(l.waiting) == 0 {
			l.dequeueLocked() // the lane after it now sits at p.next
		} else {
			p.next++
		}
	}
}

// remove drops a waiter that gave up.
func (l *Lane) remove(grant chan struct{}) {
	for i, g := range l.waiting {
		if g == grant {
			l.waiting = append(l.waiting[:i], l.waiting[i+1:]...)
			break
		}
	}
	if len(l.waiting) == 0 && l.queued {
		l.dequeueLocked()
	}
}

func (l *Lane) dequeueLocked() {
	p := l.p
	l.queued = false
	l.waiting = nil
	for i, x := range p.ring {
		if x == l {
			p.ring = append(p.ring[:i], p.ring[i+1:]...)
			if i < p.next {
				p.next--
			}
			return
		}
	}
}
