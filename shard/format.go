package shard

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Block is the unit of reading and of the epoch plan: a Parquet row group, a
// byte range of a text file, a group of tar members.
type Block struct {
	Rows   int64
	Offset int64 // byte range in the file, for scheduling and the cache
	Length int64
}

// FileMeta is what a format learned about one file when it was inspected.
type FileMeta struct {
	Info   FileInfo
	Schema *arrow.Schema // the file's full Arrow schema
	Blocks []Block
	// State is the format's own parsed metadata, reused for every block read.
	State any
}

// Format reads one file format into Arrow. Implementations must be safe for
// concurrent use; panics inside them are turned into errors by the caller.
type Format interface {
	// Name is the spec's format string.
	Name() string
	// Inspect reads a file's metadata: schema and blocks.
	Inspect(ctx context.Context, f File, info FileInfo, opts map[string]string) (*FileMeta, error)
	// ReadBlock decodes one block, keeping only the named top-level columns
	// (nil: all) in that order.
	ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error)
}

// A TreeFormat reads a directory tree as one unit rather than file by file:
// an image folder, whose labels are its subfolders' names. Open lists the
// tree once and InspectTree lays its files out in blocks of many files;
// ReadTreeBlock reads a block's files through the store. A dataset of a tree
// format names exactly one directory; Inspect and ReadBlock are not used.
type TreeFormat interface {
	Format
	// InspectTree lays out files (every regular file under root, sorted by
	// URI) in blocks. The FileMeta's Info is root's.
	InspectTree(ctx context.Context, root FileInfo, files []FileInfo, opts map[string]string) (*FileMeta, error)
	ReadTreeBlock(ctx context.Context, store Store, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error)
}

// A RowNamer names where one row came from as precisely as its format can
// (an image file, a tar member), for errors about that row found after
// reading, such as an image that does not decode.
type RowNamer interface {
	RowPlace(meta *FileMeta, block int, row int64) (file, where string)
}

// Formats maps format names to implementations.
type Formats map[string]Format

// DefaultFormats returns every format this build reads.
func DefaultFormats() Formats {
	fs := Formats{}
	for _, f := range []Format{Parquet{}, CSV{}, JSONLines{}, NumPy{}, Images{}, WebDataset{}} {
		fs[f.Name()] = f
	}
	return fs
}

// guard runs fn, turning a panic into an InputError: a malformed file must
// never take the daemon down, and some decoders panic on bad input.
func guard[T any](file, where string, fn func() (T, error)) (out T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = BadInput(file, where, fmt.Errorf("reader panicked: %v", r))
			_ = debug.Stack // kept for the logging interceptor, which records stacks of its own panics
		}
	}()
	return fn()
}
