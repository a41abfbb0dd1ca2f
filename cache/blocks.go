package cache

import (
	"context"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// BlockReader decodes the blocks of an opened dataset (a *shard.Dataset).
type BlockReader interface {
	Schema() *arrow.Schema
	ReadBlock(ctx context.Context, block int, mem memory.Allocator) (arrow.RecordBatch, error)
	// BlockKey names what decoding the block yields: the file's URI and
	// version, the block's place in it, and the decoding (format, columns,
	// options); "" means the block must not be cached.
	BlockKey(block int) string
	// BlockBytes is the block's stored size.
	BlockBytes(block int) int64
}

// Blocks reads a dataset's blocks through the cache: a block decoded once,
// by any session, serves every other that reads it while it stays cached.
// It is a prefetch.Source.
type Blocks struct {
	r BlockReader
	c *Cache
}

// Blocks returns r's blocks through the cache.
func (c *Cache) Blocks(r BlockReader) *Blocks { return &Blocks{r: r, c: c} }

// Schema is the schema of every block.
func (b *Blocks) Schema() *arrow.Schema { return b.r.Schema() }

// BlockBytes is the block's stored size.
func (b *Blocks) BlockBytes(block int) int64 { return b.r.BlockBytes(block) }

// ReadBlock returns the decoded block, from the cache or decoded with mem
// (and then cached). The caller releases it, and must not modify it: other
// sessions may hold the same record.
func (b *Blocks) ReadBlock(ctx context.Context, block int, mem memory.Allocator) (arrow.RecordBatch, error) {
	key := b.r.BlockKey(block)
	if key == "" {
		return b.r.ReadBlock(ctx, block, mem)
	}
	rec, err := b.c.Record(ctx, key, func() (arrow.RecordBatch, error) { return b.r.ReadBlock(ctx, block, mem) })
	if err == nil && !rec.Schema().Equal(b.r.Schema()) {
		// A key that two decodings share would be a bug elsewhere: read
		// the block afresh rather than hand out another decoding's columns.
		rec.Release()
		return b.r.ReadBlock(ctx, block, mem)
	}
	return rec, err
}
