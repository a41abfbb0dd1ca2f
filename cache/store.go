package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/loaderd/loaderd/shard"
)

// DefaultChunk is the size of a cached byte range: large enough that a
// Parquet column chunk or a handful of JPEGs is a few entries, small enough
// that a footer read does not pull in megabytes.
const DefaultChunk = 1 << 20

// Store wraps a shard.Store so that reads go through the cache in aligned
// chunks. The inner file is opened only on a miss.
type Store struct {
	inner shard.Store
	c     *Cache
	chunk int64
}

// NewStore returns a caching store over inner.
func NewStore(inner shard.Store, c *Cache) *Store {
	return &Store{inner: inner, c: c, chunk: DefaultChunk}
}

// Glob implements shard.Store.
func (s *Store) Glob(ctx context.Context, pattern string) ([]shard.FileInfo, error) {
	return s.inner.Glob(ctx, pattern)
}

// Open implements shard.Store.
func (s *Store) Open(ctx context.Context, f shard.FileInfo) (shard.File, error) {
	return &file{ctx: ctx, s: s, info: f}, nil
}

type file struct {
	ctx  context.Context
	s    *Store
	info shard.FileInfo

	once  sync.Once
	inner shard.File
	err   error
}

func (f *file) Size() int64 { return f.info.Size }

func (f *file) Close() error {
	if f.inner != nil {
		return f.inner.Close()
	}
	return nil
}

func (f *file) open() (shard.File, error) {
	f.once.Do(func() { f.inner, f.err = f.s.inner.Open(f.ctx, f.info) })
	return f.inner, f.err
}

// ReadAt implements io.ReaderAt through cached chunks.
func (f *file) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", f.info.URI, off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= f.info.Size {
			return n, io.EOF
		}
		idx := pos / f.s.chunk
		chunk, err := f.s.c.Get(f.key(idx), func() ([]byte, error) { return f.load(idx) })
		if err != nil {
			return n, err
		}
		c := copy(p[n:], chunk[pos-idx*f.s.chunk:])
		if c == 0 {
			return n, io.ErrUnexpectedEOF
		}
		n += c
	}
	return n, nil
}

func (f *file) key(idx int64) string {
	return fmt.Sprintf("%s\x00%s\x00%d\x00%d", f.info.URI, f.info.Version, f.s.chunk, idx)
}

func (f *file) load(idx int64) ([]byte, error) {
	inner, err := f.open()
	if err != nil {
		return nil, err
	}
	start := idx * f.s.chunk
	buf := make([]byte, min(f.s.chunk, f.info.Size-start))
	if m, err := inner.ReadAt(buf, start); m < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file shrank since it was listed
		}
		return nil, fmt.Errorf("%s: read bytes %d..%d: %w", f.info.URI, start, start+int64(len(buf)), err)
	}
	return buf, nil
}
