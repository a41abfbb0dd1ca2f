package feed

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/loaderd/loaderd/shard"
)

// datasets keeps recently opened datasets, so that the ranks of a job and the
// epochs of a run read each file's footer once. An entry is reused while the
// spec's files list the same (path, version); it is bounded in count.
type datasets struct {
	opts shard.OpenOptions
	max  int

	mu      sync.Mutex
	entries map[string]*datasetEntry // by fingerprint
	tick    uint64
}

type datasetEntry struct {
	once sync.Once // opened once however many sessions ask at the same time
	ds   *shard.Dataset
	err  error
	used uint64
}

func newDatasets(opts shard.OpenOptions, maxEntries int) *datasets {
	return &datasets{opts: opts, max: max(maxEntries, 1), entries: map[string]*datasetEntry{}}
}

// open returns the opened dataset for spec.
func (c *datasets) open(ctx context.Context, spec shard.Spec, log *slog.Logger) (*shard.Dataset, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	key := spec.Fingerprint()
	for {
		c.mu.Lock()
		e, ok := c.entries[key]
		if !ok {
			e = &datasetEntry{}
			c.entries[key] = e
			c.evictLocked()
		}
		c.tick++
		e.used = c.tick
		c.mu.Unlock()

		e.once.Do(func() {
			opts := c.opts
			opts.Logger = log
			e.ds, e.err = shard.Open(ctx, spec, opts)
		})
		if e.err != nil {
			c.drop(key, e) // errors are not cached: the user may fix the file
			return nil, e.err
		}
		if ok {
			listed, err := shard.List(ctx, spec, c.opts.Store)
			if err != nil {
				c.drop(key, e)
				return nil, err
			}
			if !slices.Equal(listed, e.ds.Listed) {
				c.drop(key, e) // files changed: open afresh
				continue
			}
		}
		return e.ds, nil
	}
}

func (c *datasets) drop(key string, e *datasetEntry) {
	c.mu.Lock()
	if c.entries[key] == e {
		delete(c.entries, key)
	}
	c.mu.Unlock()
}

func (c *datasets) evictLocked() {
	for len(c.entries) > c.max {
		var oldest string
		at := ^uint64(0)
		for k, e := range c.entries {
			if e.used < at {
				oldest, at = k, e.used
			}
		}
		delete(c.entries, oldest)
	}
}
