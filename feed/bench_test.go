package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
)

// BenchmarkEpochBoundary times what a rank waits at the start of an epoch,
// over a real socket with the Go client: opening the next epoch's stream and
// receiving its first batch, after reading the epoch before to its end. With
// look-ahead the next epoch was prepared while the rank read this one. The
// rank takes 20 ms over its last batch, as a training step would.
func BenchmarkEpochBoundary(b *testing.B) {
	dir := b.TempDir()
	for i := range 4 {
		writeIDs(b, filepath.Join(dir, fmt.Sprintf("p%d.parquet", i)), 20_000)
	}
	for _, lookahead := range []bool{true, false} {
		b.Run(fmt.Sprintf("lookahead=%v", lookahead), func(b *testing.B) {
			local, _ := shard.NewLocalStore([]string{dir})
			mem := prefetch.NewMemory(512 << 20)
			c, _ := cache.New(cache.Options{Budget: 128 << 20, Charge: mem.Charge})
			defer c.Close()
			opts := Options{Socket: filepath.Join(b.TempDir(), "d.sock")}
			if !lookahead {
				opts.MaxPrepared = -1
			}
			srv, err := NewServer(opts, Deps{Store: local, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(2),
				Memory: mem, Cache: c})
			if err != nil {
				b.Fatal(err)
			}
			serveUntilCleanup(b, srv)
			client, _ := Dial(srv.Socket())
			defer client.Close()
			spec := shard.Spec{Format: "parquet", URIs: []string{dir}, Shuffle: &shard.Shuffle{Seed: 1}}
			ctx := context.Background()
			var waited time.Duration
			for e := range int64(b.N + 1) {
				t0 := time.Now()
				br, err := client.Stream(ctx, StreamRequest{Spec: spec, World: 1, Epoch: e, BatchSize: 1000})
				if err != nil {
					b.Fatal(err)
				}
				for first := true; ; first = false {
					bt, err := br.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					bt.Record.Release()
					if first && e > 0 {
						waited += time.Since(t0)
					}
				}
				br.Close()
				time.Sleep(20 * time.Millisecond)
			}
			b.ReportMetric(float64(waited.Microseconds())/float64(b.N), "µs/boundary")
			b.ReportMetric(0, "ns/op")
		})
	}
}
