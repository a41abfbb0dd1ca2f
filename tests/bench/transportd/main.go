// Command transportd is the daemon of the transport benchmark
// (tests/bench/bench_transport.py): loaderd's own feed server (sessions,
// shared-memory rings, gRPC) over an in-memory format, so that what the
// benchmark measures is the transport and not Parquet decoding.
//
// The format "memory" reads a small text file "rows=R blocks=B width=W":
// B blocks of R rows of one column x, fixed_size_list<float32, W>, every
// block the same record built once in memory (value i of a block is i).
// Batches are zero-copy slices of it, as batches of any format are when
// they lie within one block.
//
//	transportd SOCKET DATA_ROOT
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "transportd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: transportd SOCKET DATA_ROOT")
	}
	store, err := shard.NewLocalStore([]string{args[1]})
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := feed.NewServer(feed.Options{Socket: args[0]}, feed.Deps{
		Store: store, Formats: shard.Formats{"memory": memoryFormat{}}, Pool: prefetch.NewPool(2), Logger: log,
	})
	if err != nil {
		return err
	}
	return srv.Serve(ctx, func() { fmt.Fprintln(os.Stderr, "transportd ready on", srv.Socket()) })
}

type memoryFormat struct{}

func (memoryFormat) Name() string { return "memory" }

func (memoryFormat) Inspect(_ context.Context, f shard.File, info shard.FileInfo, _ map[string]string) (*shard.FileMeta, error) {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		return nil, err
	}
	var rows, blocks, width int
	if _, err := fmt.Sscanf(string(b), "rows=%d blocks=%d width=%d", &rows, &blocks, &width); err != nil || rows < 1 || blocks < 1 || width < 1 {
		return nil, shard.BadInput(info.URI, "header", fmt.Errorf("want rows=R blocks=B width=W in %q: %w", b, err))
	}
	sc := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.FixedSizeListOfNonNullable(int32(width), arrow.PrimitiveTypes.Float32)}}, nil)
	values := make([]float32, rows*width)
	for i := range values {
		values[i] = float32(i)
	}
	vals := array.NewData(arrow.PrimitiveTypes.Float32, len(values),
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Float32Traits.CastToBytes(values))}, nil, 0, 0)
	defer vals.Release()
	list := array.NewData(sc.Field(0).Type, rows, []*memory.Buffer{nil}, []arrow.ArrayData{vals}, 0, 0)
	defer list.Release()
	col := array.MakeFromData(list)
	defer col.Release()
	rec := array.NewRecordBatch(sc, []arrow.Array{col}, int64(rows))
	meta := &shard.FileMeta{Info: info, Schema: sc, State: rec}
	for range blocks {
		meta.Blocks = append(meta.Blocks, shard.Block{Rows: int64(rows)})
	}
	return meta, nil
}

func (memoryFormat) ReadBlock(_ context.Context, _ shard.File, meta *shard.FileMeta, _ int, _ []string, _ memory.Allocator) (arrow.RecordBatch, error) {
	rec := meta.State.(arrow.RecordBatch)
	rec.Retain()
	return rec, nil
}
