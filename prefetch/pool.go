package prefetch

import "context"

// Pool bounds how many blocks are read at once across every session of the
// daemon. The zero value is not usable; make one with NewPool.
type Pool struct {
	slots chan struct{}
}

// NewPool returns a pool of n workers (at least 1).
func NewPool(n int) *Pool {
	return &Pool{slots: make(chan struct{}, max(n, 1))}
}

// Workers is the pool's size.
func (p *Pool) Workers() int { return cap(p.slots) }

// do runs fn once a worker slot is free, or returns ctx's error.
func (p *Pool) do(ctx context.Context, fn func()) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.slots }()
	fn()
	return nil
}
