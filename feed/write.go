package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/shard"
)

// writeBatchRows is the batch size a write reads in: large enough to keep
// writers efficient, small enough to bound what is held at once.
const writeBatchRows = 16384

// keptWrites is how many finished writes Status still reports.
const keptWrites = 16

// write is the progress of one Write call, read by Status.
type write struct {
	id, job, dir, format string
	total                int64
	started              time.Time
	rows, files, bytes   atomic.Int64
	mu                   sync.Mutex
	state, err           string
	took                 time.Duration
}

func (w *write) finish(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.took = time.Since(w.started)
	if err != nil {
		w.state, w.err = "failed", err.Error()
	} else {
		w.state = "done"
	}
}

type writes struct {
	seq  atomic.Int64
	mu   sync.Mutex
	list []*write // running and recently finished, oldest first
}

func (r *writes) add(w *write) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Drop the oldest finished ones beyond the kept number.
	finished := 0
	for _, x := range r.list {
		x.mu.Lock()
		if x.state != "running" {
			finished++
		}
		x.mu.Unlock()
	}
	for i := 0; finished >= keptWrites && i < len(r.list); {
		x := r.list[i]
		x.mu.Lock()
		done := x.state != "running"
		x.mu.Unlock()
		if done {
			r.list = slices.Delete(r.list, i, i+1)
			finished--
			continue
		}
		i++
	}
	r.list = append(r.list, w)
}

func (r *writes) status() []*feedv1.WriteStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*feedv1.WriteStatus, 0, len(r.list))
	for _, w := range r.list {
		w.mu.Lock()
		took := w.took
		if w.state == "running" {
			took = time.Since(w.started)
		}
		out = append(out, &feedv1.WriteStatus{
			WriteId: w.id, Job: w.job, Dir: w.dir, Format: w.format,
			RowsWritten: w.rows.Load(), RowsTotal: w.total, FilesWritten: w.files.Load(),
			BytesWritten: w.bytes.Load(), State: w.state, Error: w.err, Seconds: took.Seconds(),
		})
		w.mu.Unlock()
	}
	return out
}

// passCounter counts the bytes written through it to w.
type passCounter struct {
	w io.Writer
	n *atomic.Int64
}

func (c passCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// Write implements the Write RPC: the same pipeline as a stream of rank 0 of
// 1 (file order, or the spec's shuffle for epoch 0), cut into files of equal
// row counts, each written under a temporary name and renamed when complete.
// When the write fails, the files it completed are removed: a directory gets
// a whole dataset or nothing new.
func (v *service) Write(ctx context.Context, req *feedv1.WriteRequest) (*feedv1.WriteResponse, error) {
	if v.s.outputs == nil {
		return nil, fmt.Errorf("%w: this daemon writes no datasets", shard.ErrUnsupported)
	}
	ext, ok := shard.WriteFormats[req.GetFormat()]
	if !ok {
		return nil, shard.Invalidf("cannot write format %q (parquet, csv, json)", req.GetFormat())
	}
	spec := specFromProto(req.GetDataset())
	ds, err := v.s.datasets.open(ctx, spec, v.s.log)
	if err != nil {
		return nil, err
	}
	sink, err := v.s.outputs.OpenDir(ctx, req.GetDir())
	if err != nil {
		return nil, err
	}
	perFile := filesRows(ds.Rows, int64(spec.Partitions), req.GetRowsPerFile(), int64(len(ds.Files)))
	w := &write{id: fmt.Sprintf("w%d", v.s.writes.seq.Add(1)), job: req.GetJob(), dir: req.GetDir(),
		format: req.GetFormat(), total: ds.Rows, started: time.Now(), state: "running"}
	v.s.writes.add(w)
	paths, err := v.runWrite(ctx, ds, spec, sink, w, req.GetFormat(), ext, perFile)
	w.finish(err)
	if err != nil {
		return nil, err
	}
	v.s.log.Info("dataset written", "write", w.id, "dir", w.dir, "files", len(paths), "rows", w.rows.Load())
	return &feedv1.WriteResponse{Paths: paths, Rows: w.rows.Load(), Bytes: w.bytes.Load()}, nil
}

// filesRows is the rows per output file: partitions, else the request's
// rows per file, else one input file's share.
func filesRows(rows, partitions, perFile, inputs int64) int64 {
	switch {
	case partitions > 0:
		return max(1, (rows+partitions-1)/partitions)
	case perFile > 0:
		return perFile
	}
	return max(1, (rows+max(1, inputs)-1)/max(1, inputs))
}

func (v *service) runWrite(ctx context.Context, ds *shard.Dataset, spec shard.Spec, sink shard.Sink, w *write, format, ext string, perFile int64) (paths []string, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer v.s.onStop(cancel)()
	ps, err := v.s.whole(ctx, ds, spec, int(min(perFile, writeBatchRows)))
	if err != nil {
		return nil, err
	}
	defer ps.Close()

	var (
		part   shard.Part
		rw     shard.RecordWriter
		inFile int64
	)
	defer func() {
		if err == nil {
			return
		}
		if part != nil {
			part.Abort()
		}
		for _, p := range paths {
			_ = sink.Remove(context.WithoutCancel(ctx), p)
		}
		paths = nil
	}()
	open := func() error {
		var err error
		part, err = sink.Create(ctx, fmt.Sprintf("part-%05d.%s", len(paths), ext))
		if err != nil {
			return err
		}
		rw, err = shard.NewRecordWriter(format, passCounter{part, &w.bytes}, ps.Schema())
		inFile = 0
		return err
	}
	commit := func() error {
		if err := rw.Close(); err != nil {
			return fmt.Errorf("%s: %w", part.Name(), err)
		}
		if err := part.Commit(); err != nil {
			return err
		}
		paths = append(paths, part.Name())
		part = nil
		w.files.Add(1)
		return nil
	}
	writeSlice := func(rec arrow.RecordBatch) error {
		if part == nil {
			if err := open(); err != nil {
				return err
			}
		}
		if err := rw.Write(rec); err != nil {
			return fmt.Errorf("%s: %w", part.Name(), err)
		}
		inFile += rec.NumRows()
		w.rows.Add(rec.NumRows())
		if inFile >= perFile {
			return commit()
		}
		return nil
	}
	for {
		b, err := ps.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return paths, err
		}
		rec := b.Record
		for off := int64(0); off < rec.NumRows() && err == nil; {
			n := min(rec.NumRows()-off, perFile-inFile)
			slice := rec
			if n != rec.NumRows() || sliced(rec) {
				// A copy, not a view: pqarrow ignores the slice offset of
				// fixed-size-list children and would write the wrong values.
				view := rec.NewSlice(off, off+n)
				slice, err = concatRecords(rec.Schema(), []arrow.RecordBatch{view})
				view.Release()
			} else {
				slice.Retain()
			}
			if err == nil {
				err = writeSlice(slice)
				slice.Release()
			}
			off += n
		}
		rec.Release()
		if err != nil {
			return paths, err
		}
	}
	if part == nil && len(paths) == 0 {
		// An empty dataset still gets one file, holding its schema.
		if err := open(); err != nil {
			return paths, err
		}
	}
	if part != nil {
		if err := commit(); err != nil {
			return paths, err
		}
	}
	return paths, nil
}

// sliced reports whether any column of rec is a view at an offset.
func sliced(rec arrow.RecordBatch) bool {
	for _, c := range rec.Columns() {
		if c.Data().Offset() != 0 {
			return true
		}
	}
	return false
}

// onStop calls fn when the server stops; the returned func unregisters it.
func (s *Server) onStop(fn func()) func() bool { return context.AfterFunc(s.base, fn) }
