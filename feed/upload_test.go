package feed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startUploadServer serves dir and an upload store of budget bytes, as the
// daemon wires them.
func startUploadServer(t *testing.T, dir string, budget int64) (*Server, *shard.MemStore) {
	t.Helper()
	local, err := shard.NewLocalStore([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	uploads := shard.NewMemStore(budget, nil)
	store := shard.Router{Local: local, Remote: map[string]shard.Store{shard.MemScheme: uploads}}
	opts := Options{Socket: filepath.Join(t.TempDir(), "run", "d.sock"), ShmMinBatchBytes: -1}
	return startServerDeps(t, opts, Deps{Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(2),
		Uploads: uploads}), uploads
}

// TestUploadThenShard: an uploaded table is a dataset like a file — every
// id once across ranks — and a second upload of it sends nothing new.
func TestUploadThenShard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 1000)
	table, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, uploads := startUploadServer(t, dir, 1<<20)
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	uri, err := c.Upload(ctx, table)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(uri, "mem://") {
		t.Fatalf("uri %q", uri)
	}
	if again, err := c.Upload(ctx, table); err != nil || again != uri {
		t.Fatalf("second upload: %q, %v", again, err)
	}
	// A header alone asks: held or not.
	probe := func(data []byte) (*feedv1.UploadResponse, error) {
		st, err := c.api.Upload(ctx)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		h := &feedv1.UploadHeader{Sha256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
		if err := st.Send(&feedv1.UploadRequest{Part: &feedv1.UploadRequest_Header{Header: h}}); err != nil {
			return nil, err
		}
		return st.CloseAndRecv()
	}
	if resp, err := probe(table); err != nil || !resp.GetExisted() || resp.GetUri() != uri {
		t.Fatalf("probe of a held table: %v, %v", resp, err)
	}
	if _, err := probe([]byte("not held")); status.Code(err) != codes.NotFound {
		t.Fatalf("probe of a table not held: %v", err)
	}
	if st := uploads.Stats(); st.Uploads != 1 || st.Tables != 1 || st.Bytes != int64(len(table)) {
		t.Fatalf("store after two uploads of one table: %+v", st)
	}
	spec := shard.Spec{Format: "parquet", URIs: []string{uri}, Shuffle: &shard.Shuffle{Seed: 3}}
	info, err := c.Describe(ctx, spec)
	if err != nil || info.Rows != 1000 || info.Blocks != 10 {
		t.Fatalf("describe: %+v, %v", info, err)
	}
	seen := map[int64]int{}
	for r := range 3 {
		br, err := c.Stream(ctx, StreamRequest{Spec: spec, Rank: r, World: 3, Mode: shard.Exact, BatchSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		for {
			b, err := br.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range b.Record.Column(0).(*array.Int64).Int64Values() {
				seen[id]++
			}
			b.Record.Release()
		}
		br.Close()
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct ids", len(seen))
	}
	rep, err := c.Status(ctx)
	if err != nil || rep.Uploads == nil || rep.Uploads.Tables != 1 {
		t.Fatalf("status uploads: %+v, %v", rep.Uploads, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(srv.Collector())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			got[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["loaderd_upload_tables"] != 1 || got["loaderd_uploads_total"] != 1 || got["loaderd_upload_bytes"] != float64(len(table)) {
		t.Fatalf("upload metrics: tables %v, uploads %v, bytes %v", got["loaderd_upload_tables"],
			got["loaderd_uploads_total"], got["loaderd_upload_bytes"])
	}
}

// TestUploadErrors: what an upload can get wrong comes back with a code and
// a message that says what to do; the daemon goes on.
func TestUploadErrors(t *testing.T) {
	dir := t.TempDir()
	srv, _ := startUploadServer(t, dir, 1000)
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	_, err = c.Upload(ctx, make([]byte, 1001))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--upload-bytes") {
		t.Fatalf("too large: %v", err)
	}
	_, err = c.Describe(ctx, shard.Spec{Format: "parquet", URIs: []string{"mem://" + strings.Repeat("ab", 32)}})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "upload it again") {
		t.Fatalf("missing table: %v", err)
	}
	// Bytes that are not Parquet: the upload is taken, reading it names it.
	uri, err := c.Upload(ctx, []byte("not a parquet file"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Describe(ctx, shard.Spec{Format: "parquet", URIs: []string{uri}})
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), uri) {
		t.Fatalf("not parquet: %v", err)
	}
	// A daemon without an upload store says how to do without.
	plain := startServer(t, dir)
	c2, err := Dial(plain.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, err = c2.Upload(ctx, []byte("x"))
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "upload-bytes is 0") {
		t.Fatalf("no store: %v", err)
	}
}
