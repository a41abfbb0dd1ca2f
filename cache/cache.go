// Package cache is loaderd's node-wide block cache, with one byte budget for
// two kinds of entries:
//
//   - decoded blocks (Arrow record batches), keyed by the file's URI and
//     version, the block's byte range and the decoding (format, columns,
//     options): the cost that repeats every epoch is decoding, so a block
//     decoded once serves every later epoch, rank and job that reads it;
//   - raw byte ranges of files (the Store decorator), for object stores,
//     where a read is a network round trip. Local files are not worth it: the
//     kernel's page cache already holds them.
//
// Concurrent misses on one key load once. The cache is best-effort: losing
// an entry is never an error, and correctness never depends on a hit.
package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/dgraph-io/ristretto/v2"
	"github.com/loaderd/loaderd/shard"
)

// Cache holds decoded blocks and byte ranges under a byte budget. Safe for
// concurrent use.
type Cache struct {
	r       *ristretto.Cache[string, *entry]
	budget  int64
	charge  func(int64)
	mu      sync.Mutex
	flights map[string]*flight
	stats   Stats
}

// Options configure a Cache.
type Options struct {
	// Budget is the most bytes the cache holds; 0 disables caching (every
	// Get loads; concurrent loads of one key still coalesce).
	Budget int64
	// Charge, when set, is told of bytes the cache holds outside Arrow's
	// allocator (raw byte ranges), so that a memory budget can count them;
	// decoded blocks are counted by the allocator that made them.
	Charge func(delta int64)
}

// Stats are the cache's counters since it was made.
type Stats struct {
	Hits, Misses atomic.Int64
	// Loads and LoadedBytes count values loaded on misses; LoadNanos the
	// time spent loading them.
	Loads, LoadedBytes, LoadNanos atomic.Int64
	// Evictions are entries pushed out for room, Rejections entries the
	// admission policy (or their size) kept out, Drops sets lost under
	// contention.
	Evictions, Rejections, Drops atomic.Int64
	// Bytes is what the cache holds now.
	Bytes atomic.Int64
}

// entry is one cached value. A record batch is released when the entry
// leaves the cache; Get takes its own reference under mu, so an eviction
// racing a hit never frees what the hit returns.
type entry struct {
	mu   sync.Mutex
	dead bool
	rec  arrow.RecordBatch
	raw  []byte
	cost int64
}

// New returns a cache.
func New(opts Options) (*Cache, error) {
	c := &Cache{budget: max(opts.Budget, 0), charge: opts.Charge, flights: map[string]*flight{}}
	if opts.Budget <= 0 {
		return c, nil
	}
	// Ristretto wants ~10 counters per item it may hold; decoded blocks are
	// megabytes, raw chunks one, but small files make smaller ones: allow
	// for 64 KiB.
	items := max(opts.Budget/(64<<10), 1024)
	r, err := ristretto.NewCache(&ristretto.Config[string, *entry]{
		NumCounters:        items * 10,
		MaxCost:            opts.Budget,
		BufferItems:        64,
		IgnoreInternalCost: true, // the cost is the value's bytes, nothing else
		OnEvict:            func(*ristretto.Item[*entry]) { c.stats.Evictions.Add(1) },
		OnReject:           func(*ristretto.Item[*entry]) { c.stats.Rejections.Add(1) },
		OnExit:             c.exit,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.r = r
	return c, nil
}

// exit is called by ristretto whenever an entry leaves: evicted, rejected,
// replaced or cleared.
func (c *Cache) exit(e *entry) {
	if e == nil {
		return
	}
	e.mu.Lock()
	if !e.dead {
		e.dead = true
		if e.rec != nil {
			e.rec.Release()
		}
		c.stats.Bytes.Add(-e.cost)
		if e.raw != nil && c.charge != nil {
			c.charge(-e.cost)
		}
	}
	e.mu.Unlock()
}

// Budget is the most bytes the cache holds.
func (c *Cache) Budget() int64 { return c.budget }

// Stats returns the counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// Close empties the cache, releasing what it holds, and stops its goroutines.
func (c *Cache) Close() {
	if c.r != nil {
		c.r.Close()
	}
}

// Get returns the bytes under key, calling load on a miss. Concurrent misses
// on one key call load once and share its result. The bytes must not be
// changed.
func (c *Cache) Get(key string, load func() ([]byte, error)) ([]byte, error) {
	e, err := c.get(context.Background(), "raw\x00"+key, func() (*entry, error) {
		b, err := load()
		if err != nil {
			return nil, err
		}
		return &entry{raw: b, cost: int64(len(b))}, nil
	})
	if err != nil {
		return nil, err
	}
	return e.raw, nil
}

// Record returns the record batch under key, calling load on a miss;
// concurrent misses on one key call load once. The caller owns one reference
// to the result and releases it.
func (c *Cache) Record(ctx context.Context, key string, load func() (arrow.RecordBatch, error)) (arrow.RecordBatch, error) {
	e, err := c.get(ctx, "rec\x00"+key, func() (*entry, error) {
		rec, err := load()
		if err != nil {
			return nil, err
		}
		return &entry{rec: rec, cost: shard.RecordBytes(rec)}, nil
	})
	if err != nil {
		return nil, err
	}
	return e.rec, nil
}

// flight is a load in progress; whoever joins it gets its result. For a
// record, the loader takes a reference for each waiter before it leaves the
// map, so that a waiter owns one however soon the entry is evicted.
type flight struct {
	done    chan struct{}
	e       *entry
	err     error
	waiters int
}

// get returns the entry under key: a hit (with a reference taken for the
// caller), or the result of a load, shared with concurrent callers. The
// returned entry's rec carries one reference for the caller.
func (c *Cache) get(ctx context.Context, key string, load func() (*entry, error)) (*entry, error) {
	for {
		if e, ok := c.hit(key); ok {
			c.stats.Hits.Add(1)
			return e, nil
		}
		c.stats.Misses.Add(1)
		c.mu.Lock()
		if fl := c.flights[key]; fl != nil {
			fl.waiters++
			c.mu.Unlock()
			e, err, retry := c.wait(ctx, key, fl)
			if retry {
				continue
			}
			return e, err
		}
		fl := &flight{done: make(chan struct{})}
		c.flights[key] = fl
		c.mu.Unlock()
		return c.lead(key, fl, load)
	}
}

func (c *Cache) hit(key string) (*entry, bool) {
	if c.r == nil {
		return nil, false
	}
	e, ok := c.r.Get(key)
	if !ok {
		return nil, false
	}
	if e.rec == nil {
		return e, true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dead {
		return nil, false // evicted between the lookup and now
	}
	e.rec.Retain()
	return e, true
}

// lead runs a load and shares its result.
func (c *Cache) lead(key string, fl *flight, load func() (*entry, error)) (e *entry, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cache: loading %q panicked: %v", key, p)
			e = nil
		}
		c.finish(key, fl, e, err)
	}()
	t0 := time.Now()
	e, err = load()
	c.stats.LoadNanos.Add(int64(time.Since(t0)))
	if err != nil {
		return nil, err
	}
	c.stats.Loads.Add(1)
	c.stats.LoadedBytes.Add(e.cost)
	c.store(key, e)
	return e, nil
}

// store offers the entry to the cache, with a reference of its own for a
// record, and waits until a Get would see it, so that a load that just
// finished is not repeated by the next miss.
func (c *Cache) store(key string, e *entry) {
	if c.r == nil {
		return
	}
	if e.rec != nil {
		e.rec.Retain()
	}
	c.stats.Bytes.Add(e.cost)
	if e.raw != nil && c.charge != nil {
		c.charge(e.cost)
	}
	if !c.r.Set(key, e, e.cost) {
		c.stats.Drops.Add(1)
		c.exit(e) // never entered: let go of the cache's reference
		return
	}
	c.r.Wait()
}

// finish hands the result to the flight's waiters.
func (c *Cache) finish(key string, fl *flight, e *entry, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e != nil && e.rec != nil {
		for range fl.waiters {
			e.rec.Retain()
		}
	}
	fl.e, fl.err = e, err
	delete(c.flights, key)
	close(fl.done)
}

// wait waits for a flight; retry asks the caller to look again, because the
// loader gave up on its own context while this caller's is alive.
func (c *Cache) wait(ctx context.Context, key string, fl *flight) (e *entry, err error, retry bool) {
	select {
	case <-fl.done:
	case <-ctx.Done():
		c.mu.Lock()
		if c.flights[key] == fl {
			fl.waiters-- // no reference was taken for us
			c.mu.Unlock()
			return nil, ctx.Err(), false
		}
		c.mu.Unlock()
		<-fl.done // finished already: our reference exists
		if fl.e != nil && fl.e.rec != nil {
			fl.e.rec.Release()
		}
		return nil, ctx.Err(), false
	}
	if fl.err != nil {
		if isCtxErr(fl.err) && ctx.Err() == nil {
			return nil, nil, true
		}
		return nil, fl.err, false
	}
	return fl.e, nil, false
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
