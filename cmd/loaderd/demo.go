package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/dustin/go-humanize"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/shard"
)

type demoConfig struct {
	rows, files, ranks, epochs, batch int
	keep                              bool
}

// demo writes a sample Parquet dataset, serves it from an in-process daemon
// on a private socket, streams it to simulated ranks over real gRPC clients,
// checks that every row reaches exactly one rank in every epoch, and reports.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c demoConfig
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.rows, "rows", 1_000_000, "rows in the sample dataset")
	fs.IntVar(&c.files, "files", 5, "Parquet files, of uneven sizes and row groups")
	fs.IntVar(&c.ranks, "ranks", 4, "simulated trainer ranks")
	fs.IntVar(&c.epochs, "epochs", 2, "epochs")
	fs.IntVar(&c.batch, "batch-size", 4096, "rows per batch")
	fs.BoolVar(&c.keep, "keep", false, "keep the sample dataset")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.rows < 1 || c.files < 1 || c.ranks < 1 || c.epochs < 1 || c.batch < 1 {
		return fmt.Errorf("%w: demo sizes must be positive", errUsage)
	}
	dir, err := os.MkdirTemp("", "loaderd-demo-")
	if err != nil {
		return err
	}
	if c.keep {
		fmt.Fprintf(stdout, "sample dataset kept in %s\n", dir)
	} else {
		defer func() { _ = os.RemoveAll(dir) }()
	}

	start := time.Now()
	size, err := writeSample(filepath.Join(dir, "data"), c.rows, c.files)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %d rows in %d Parquet files (%s) in %.1fs\n",
		c.rows, c.files, humanize.IBytes(uint64(size)), time.Since(start).Seconds())

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := defaultConfig()
	cfg.Socket, cfg.DataRoots = filepath.Join(dir, "loaderd.sock"), []string{dir}
	cfg.EnsureDefaults()
	d, err := newDaemon(cfg, nil, nil, log)
	if err != nil {
		return err
	}
	defer d.close()
	sctx, stop := context.WithCancel(ctx)
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- d.srv.Serve(sctx, func() { close(ready) }) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			fmt.Fprintln(stderr, "daemon:", err)
		}
	}()
	select {
	case <-ready:
	case err := <-served:
		return err
	}
	fmt.Fprintf(stdout, "daemon listening on %s, %d workers\n", cfg.Socket, cfg.Workers)

	spec := shard.Spec{Format: "parquet", URIs: []string{filepath.Join(dir, "data", "*.parquet")},
		Shuffle: &shard.Shuffle{Seed: 42}}
	var total time.Duration
	var totalBytes int64
	var heads [][]int64
	for epoch := 0; epoch < c.epochs; epoch++ {
		res, err := runEpoch(ctx, cfg.Socket, spec, c, int64(epoch))
		if err != nil {
			return fmt.Errorf("epoch %d: %w", epoch, err)
		}
		total += res.elapsed
		totalBytes += res.bytes
		heads = append(heads, res.head)
		fmt.Fprintf(stdout, "epoch %d: %d ranks got %v rows; every row exactly once; %.0f rows/s, %.0f MB/s\n",
			epoch, c.ranks, res.perRank, float64(c.rows)/res.elapsed.Seconds(), float64(res.bytes)/1e6/res.elapsed.Seconds())
	}
	for e := 1; e < len(heads); e++ {
		if slices.Equal(heads[e], heads[0]) {
			return fmt.Errorf("epochs 0 and %d began in the same order: shuffle is not per epoch", e)
		}
	}
	fmt.Fprintf(stdout, "\nloaderd demo: OK\n")
	fmt.Fprintf(stdout, "  rows      %d\n  ranks     %d\n  epochs    %d\n  batch     %d\n", c.rows, c.ranks, c.epochs, c.batch)
	fmt.Fprintf(stdout, "  rows/s    %.0f\n  MB/s      %.0f\n  time      %.2fs\n", float64(c.rows*c.epochs)/total.Seconds(),
		float64(totalBytes)/1e6/total.Seconds(), total.Seconds())
	fmt.Fprintf(stdout, "  rank 0 started epoch 0 with ids %v, epoch 1 with %v\n", heads[0], heads[min(1, len(heads)-1)])
	return nil
}

type epochResult struct {
	elapsed time.Duration
	bytes   int64
	perRank []int
	head    []int64
}

func runEpoch(ctx context.Context, socket string, spec shard.Spec, c demoConfig, epoch int64) (epochResult, error) {
	seen := make([]uint8, c.rows)
	var mu sync.Mutex
	var res epochResult
	res.perRank = make([]int, c.ranks)
	errs := make([]error, c.ranks)
	t0 := time.Now()
	var wg sync.WaitGroup
	for r := 0; r < c.ranks; r++ {
		wg.Go(func() {
			ids, n, err := streamRank(ctx, socket, feed.StreamRequest{Spec: spec, Rank: r, World: c.ranks,
				Mode: shard.Exact, Epoch: epoch, BatchSize: c.batch, Job: "demo"})
			if err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			res.bytes += n
			res.perRank[r] = len(ids)
			for _, id := range ids {
				if id >= 0 && id < int64(len(seen)) && seen[id] < 255 {
					seen[id]++
				}
			}
			if r == 0 {
				res.head = ids[:min(5, len(ids))]
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	for id, n := range seen {
		if n != 1 {
			return res, fmt.Errorf("row %d was delivered %d times", id, n)
		}
	}
	return res, nil
}

func streamRank(ctx context.Context, socket string, req feed.StreamRequest) ([]int64, int64, error) {
	cl, err := feed.Dial(socket)
	if err != nil {
		return nil, 0, err
	}
	defer cl.Close()
	br, err := cl.Stream(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	defer br.Close()
	var ids []int64
	var n int64
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return ids, n, nil
		}
		if err != nil {
			return nil, 0, err
		}
		ids = append(ids, b.Record.Column(0).(*array.Int64).Int64Values()...)
		n += b.IPCBytes
		b.Record.Release()
	}
}

// writeSample writes rows rows of (id, x0..x7, label) into files Parquet
// files of uneven sizes, each with its own row-group length, and returns the
// bytes written.
func writeSample(dir string, rows, files int) (int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	fields := []arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}
	for i := 0; i < 8; i++ {
		fields = append(fields, arrow.Field{Name: fmt.Sprintf("x%d", i), Type: arrow.PrimitiveTypes.Float32})
	}
	fields = append(fields, arrow.Field{Name: "label", Type: arrow.PrimitiveTypes.Int32})
	sc := arrow.NewSchema(fields, nil)
	// File f gets a share proportional to f+1: uneven sizes.
	weights := files * (files + 1) / 2
	var id, size int64
	for f := 0; f < files; f++ {
		n := int64(rows * (f + 1) / weights)
		if f == files-1 {
			n = int64(rows) - id
		}
		path := filepath.Join(dir, fmt.Sprintf("part-%05d.parquet", f))
		if err := writeSampleFile(path, sc, id, n, int64(30_000+17_000*f)); err != nil {
			return 0, err
		}
		st, err := os.Stat(path)
		if err != nil {
			return 0, err
		}
		size += st.Size()
		id += n
	}
	return size, nil
}

func writeSampleFile(path string, sc *arrow.Schema, first, n, rowGroup int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	props := parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(rowGroup), parquet.WithCompression(compress.Codecs.Snappy))
	w, err := pqarrow.NewFileWriter(sc, f, props, pqarrow.DefaultWriterProps())
	if err != nil {
		f.Close()
		return err
	}
	b := array.NewRecordBuilder(memory.DefaultAllocator, sc)
	defer b.Release()
	const chunk = 65536
	for lo := int64(0); lo < n; lo += chunk {
		for i := lo; i < min(lo+chunk, n); i++ {
			id := first + i
			b.Field(0).(*array.Int64Builder).Append(id)
			for c := 1; c <= 8; c++ {
				b.Field(c).(*array.Float32Builder).Append(float32(id%1000)*0.001 + float32(c))
			}
			b.Field(9).(*array.Int32Builder).Append(int32(id % 1000))
		}
		rec := b.NewRecordBatch()
		err := w.WriteBuffered(rec)
		rec.Release()
		if err != nil {
			_ = w.Close()
			return err
		}
	}
	return w.Close()
}
