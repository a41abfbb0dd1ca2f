// Package cache is loaderd's node-wide block cache: raw byte ranges of input
// files, keyed by (URI, file version, range), with a byte budget. It sits under
// the format readers as a shard.Store decorator, so every format and every
// store benefits, and two jobs or ranks reading the same files share blocks.
//
// The cache is best-effort: losing an entry is never an error, and correctness
// never depends on a hit.
package cache

import (
	"fmt"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/singleflight"
)

// Cache holds byte slices under a byte budget. Safe for concurrent use.
type Cache struct {
	r     *ristretto.Cache[string, []byte]
	group singleflight.Group
	stats Stats
}

// Stats are the cache's counters since it was made.
type Stats struct {
	Hits, Misses, Loads, LoadedBytes atomic.Int64
}

// New returns a cache holding at most budget bytes; budget 0 disables caching
// (every Get loads, concurrent loads of one key still coalesce).
func New(budget int64) (*Cache, error) {
	c := &Cache{}
	if budget <= 0 {
		return c, nil
	}
	// Ristretto wants ~10 counters per item it may hold; items are blocks of
	// about a megabyte, but small files make smaller ones, so allow for 64 KiB.
	items := max(budget/(64<<10), 1024)
	r, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: items * 10,
		MaxCost:     budget,
		BufferItems: 64,
		Metrics:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.r = r
	return c, nil
}

// Get returns the value under key, calling load on a miss. Concurrent misses
// on one key call load once and share its result.
func (c *Cache) Get(key string, load func() ([]byte, error)) ([]byte, error) {
	if c.r != nil {
		if v, ok := c.r.Get(key); ok {
			c.stats.Hits.Add(1)
			return v, nil
		}
	}
	c.stats.Misses.Add(1)
	v, err, _ := c.group.Do(key, func() (any, error) {
		b, err := load()
		if err != nil {
			return nil, err
		}
		c.stats.Loads.Add(1)
		c.stats.LoadedBytes.Add(int64(len(b)))
		if c.r != nil {
			c.r.Set(key, b, int64(len(b)))
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// Stats returns the counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// Close stops the cache's goroutines.
func (c *Cache) Close() {
	if c.r != nil {
		c.r.Close()
	}
}
