package shard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/sync/errgroup"
)

// BlockRef places a block in a dataset: which file, which block of it.
type BlockRef struct {
	File  int
	Index int
	Rows  int64
}

// Dataset is an opened spec: its files, schema and blocks, in a fixed order.
// It is immutable and safe for concurrent use.
type Dataset struct {
	Spec   Spec
	schema *arrow.Schema // of the selected columns
	Files  []*FileMeta
	Blocks []BlockRef // in file order
	Rows   int64
	// Skipped lists files left out under OnError Skip, with why.
	Skipped []error
	// Listed is every file the spec named when it was opened, skipped or not:
	// a dataset is current while List returns the same.
	Listed []FileInfo

	store  Store
	format Format
	digest [32]byte // contentDigest, for plan fingerprints
	// decoding names what shapes a decoded block besides its bytes: the
	// format, the columns and the options.
	decoding string
	// firstRow[i] is block i's first row in the dataset: rows are numbered
	// in file order, which is what the image transforms' randomness keys on.
	firstRow []int64
}

// OpenOptions are the dependencies of Open.
type OpenOptions struct {
	Store   Store
	Formats Formats
	// Parallel bounds concurrent file inspections; 0 means 8.
	Parallel int
	Logger   *slog.Logger
}

// Open resolves a spec: lists its files, inspects each, and checks that they
// share one schema.
func Open(ctx context.Context, spec Spec, opts OpenOptions) (*Dataset, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	format, ok := opts.Formats[spec.Format]
	if !ok {
		return nil, Invalidf("unknown format %q", spec.Format)
	}
	if tf, ok := format.(TreeFormat); ok {
		return openTree(ctx, spec, opts, tf)
	}
	infos, err := List(ctx, spec, opts.Store)
	if err != nil {
		return nil, err
	}
	metas := make([]*FileMeta, len(infos))
	errs := make([]error, len(infos))
	g, gctx := errgroup.WithContext(ctx)
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	g.SetLimit(parallel)
	for i, info := range infos {
		g.Go(func() error {
			metas[i], errs[i] = inspect(gctx, opts.Store, format, info, spec.Options)
			if errs[i] != nil && (spec.OnError == Raise || !isInputError(errs[i])) {
				return errs[i]
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	d := &Dataset{Spec: spec, Listed: infos, store: opts.Store, format: format, decoding: decodingID(spec)}
	var ref *FileMeta
	for i, m := range metas {
		if errs[i] != nil {
			d.Skipped = append(d.Skipped, errs[i])
			if opts.Logger != nil {
				opts.Logger.Warn("skipping bad file", "err", errs[i])
			}
			continue
		}
		sc, err := Project(m.Schema, nilIfEmpty(spec.Columns))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Info.URI, err)
		}
		if ref == nil {
			ref, d.schema = m, sc
		} else if !sc.Equal(d.schema) {
			err := BadInput(m.Info.URI, "schema", fmt.Errorf("schema differs from %s's:\n%s\nversus\n%s",
				ref.Info.URI, sc, d.schema))
			if spec.OnError == Raise {
				return nil, err
			}
			d.Skipped = append(d.Skipped, err)
			continue
		}
		d.add(m)
	}
	if d.schema == nil {
		return nil, errors.Join(append([]error{fmt.Errorf("%w: no readable files", ErrBadInput)}, d.Skipped...)...)
	}
	d.digest = d.contentDigest()
	return d, nil
}

// add appends an inspected file and its blocks.
func (d *Dataset) add(m *FileMeta) {
	fi := len(d.Files)
	d.Files = append(d.Files, m)
	for bi, b := range m.Blocks {
		d.Blocks = append(d.Blocks, BlockRef{File: fi, Index: bi, Rows: b.Rows})
		d.firstRow = append(d.firstRow, d.Rows)
		d.Rows += b.Rows
	}
}

// openTree opens a dataset of a tree format: one directory, listed once.
func openTree(ctx context.Context, spec Spec, opts OpenOptions, tf TreeFormat) (*Dataset, error) {
	if len(spec.URIs) != 1 || strings.ContainsAny(spec.URIs[0], "*?[{") {
		return nil, Invalidf("%s datasets read one directory, got %q", tf.Name(), spec.URIs)
	}
	root := strings.TrimSuffix(spec.URIs[0], "/")
	infos, err := List(ctx, spec, opts.Store)
	if err != nil {
		return nil, err
	}
	if len(infos) == 1 && infos[0].URI == root {
		return nil, Invalidf("%s is a file; %s datasets read a directory", root, tf.Name())
	}
	// The tree's version changes whenever any file's does.
	h := sha256.New()
	var size int64
	for _, f := range infos {
		fmt.Fprintf(h, "%s\x00%s\x00", f.URI, f.Version)
		size += f.Size
	}
	info := FileInfo{URI: root, Size: size, Version: hex.EncodeToString(h.Sum(nil)[:16])}
	m, err := tf.InspectTree(ctx, info, infos, spec.Options)
	if err != nil {
		return nil, err
	}
	sc, err := Project(m.Schema, nilIfEmpty(spec.Columns))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", root, err)
	}
	d := &Dataset{Spec: spec, schema: sc, Listed: infos, store: opts.Store, format: tf, decoding: decodingID(spec)}
	d.add(m)
	d.digest = d.contentDigest()
	return d, nil
}

// List returns the files a spec names, in order, without duplicates.
func List(ctx context.Context, spec Spec, store Store) ([]FileInfo, error) {
	var infos []FileInfo
	seen := map[string]bool{}
	for _, u := range spec.URIs {
		matched, err := store.Glob(ctx, u)
		if err != nil {
			return nil, err
		}
		for _, m := range matched {
			if !seen[m.URI] {
				seen[m.URI] = true
				infos = append(infos, m)
			}
		}
	}
	return infos, nil
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func isInputError(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}

func inspect(ctx context.Context, store Store, format Format, info FileInfo, opts map[string]string) (*FileMeta, error) {
	f, err := store.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return format.Inspect(ctx, f, info, opts)
}

// BlockRows returns every block's row count in dataset order: the input of
// the epoch plan.
func (d *Dataset) BlockRows() []int64 {
	rows := make([]int64, len(d.Blocks))
	for i, b := range d.Blocks {
		rows[i] = b.Rows
	}
	return rows
}

// ReadBlock decodes block i of the dataset (an index into Blocks).
func (d *Dataset) ReadBlock(ctx context.Context, i int, mem memory.Allocator) (arrow.RecordBatch, error) {
	b := d.Blocks[i]
	m := d.Files[b.File]
	var rec arrow.RecordBatch
	var err error
	if tf, ok := d.format.(TreeFormat); ok {
		rec, err = tf.ReadTreeBlock(ctx, d.store, m, b.Index, nilIfEmpty(d.Spec.Columns), mem)
	} else {
		var f File
		if f, err = d.store.Open(ctx, m.Info); err != nil {
			return nil, err
		}
		rec, err = d.format.ReadBlock(ctx, f, m, b.Index, nilIfEmpty(d.Spec.Columns), mem)
		f.Close()
	}
	if err != nil {
		return nil, err
	}
	if !rec.Schema().Equal(d.schema) {
		rec.Release()
		return nil, BadInput(m.Info.URI, fmt.Sprintf("block %d", b.Index), errors.New("block schema differs from the file's"))
	}
	return rec, nil
}

// BlockKey names what decoding block i yields, for the block cache: the
// file's URI and version, the block's index and byte range in it, and the
// decoding (format, columns, options). Two datasets that read the same block
// the same way give it the same key, whatever their order or sharding.
func (d *Dataset) BlockKey(i int) string {
	b := d.Blocks[i]
	m := d.Files[b.File]
	blk := m.Blocks[b.Index]
	return fmt.Sprintf("%s\x00%s\x00%d\x00%d+%d\x00%s", m.Info.URI, m.Info.Version, b.Index, blk.Offset, blk.Length, d.decoding)
}

// BlockBytes is block i's stored size (0 when the format does not know it).
func (d *Dataset) BlockBytes(i int) int64 {
	b := d.Blocks[i]
	return d.Files[b.File].Blocks[b.Index].Length
}

// decodingID is a short digest of the parts of a spec that shape decoding.
func decodingID(spec Spec) string {
	canon := spec
	// Images are decoded after blocks are read: a block is the same
	// whatever is done to its images.
	canon.URIs, canon.Shuffle, canon.OnError, canon.Image = nil, nil, Raise, nil
	return canon.Fingerprint()
}

// RowID numbers row r of block i in the whole dataset, in file order: a
// sample's identity whatever the shuffle and the world size.
func (d *Dataset) RowID(i int, r int64) int64 { return d.firstRow[i] + r }

// RowPlace names the file and the place in it of row r of block i.
func (d *Dataset) RowPlace(i int, r int64) (file, where string) {
	b := d.Blocks[i]
	m := d.Files[b.File]
	if n, ok := d.format.(RowNamer); ok {
		return n.RowPlace(m, b.Index, r)
	}
	return m.Info.URI, fmt.Sprintf("block %d, row %d", b.Index, r)
}

// Window bytes: when a plan's window is not set, a window holds about this
// many bytes of input (and at least MinWindowRows, at most
// DefaultWindowRows rows). A window's blocks are read ahead together, so
// for images, at a hundred kilobytes a row, this is what bounds a session's
// read-ahead.
const (
	WindowBytes   = 64 << 20
	MinWindowRows = 256
)

// EpochPlan is NewEpochPlan over the dataset's blocks, with windows sized to
// its rows' bytes unless the shuffle names a window.
func (d *Dataset) EpochPlan(shuffle *Shuffle, epoch int64, world int, mode Mode) (*EpochPlan, error) {
	p, err := NewEpochPlan(d.BlockRows(), shuffle, epoch, world, mode)
	if err != nil {
		return nil, err
	}
	var bytes int64
	for _, b := range d.Blocks {
		bytes += d.Files[b.File].Blocks[b.Index].Length
	}
	p.window = DefaultWindowRows
	if d.Rows > 0 && bytes > 0 {
		perRow := max(bytes/d.Rows, 1)
		p.window = min(max(WindowBytes/perRow, MinWindowRows), DefaultWindowRows)
	}
	return p, nil
}

// BlockURI names block i's file, for errors and metrics.
func (d *Dataset) BlockURI(i int) string { return d.Files[d.Blocks[i].File].Info.URI }

// Schema is the Arrow schema of every block's record batch.
func (d *Dataset) Schema() *arrow.Schema { return d.schema }
