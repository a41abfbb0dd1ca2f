package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/decode"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/tests/corpora"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var rrc32 = &decode.Spec{Column: "image", Seed: 1, Ops: []decode.Op{
	{Kind: decode.RandomResizedCrop, Height: 32, Width: 32}, {Kind: decode.RandomHorizontalFlip, P: 0.5}}}

// streamAll reads a whole stream, returning rows, samples skipped, and the
// first error.
func streamAll(c *Client, req StreamRequest) (rows, skipped int64, err error) {
	br, err := c.Stream(context.Background(), req)
	if err != nil {
		return 0, 0, err
	}
	defer br.Close()
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return rows, skipped, nil
		}
		if err != nil {
			return rows, skipped, err
		}
		rows += b.Record.NumRows()
		skipped += b.Skipped
		b.Record.Release()
	}
}

// An image folder and WebDataset shards, decoded in the daemon: the image
// column arrives as an arrow.fixed_shape_tensor of the transform's shape.
func TestImagesOverSocket(t *testing.T) {
	root := corpora.Path(t, "images")
	wds := corpora.Path(t, "webdataset", "derived")
	srv := startServer(t, root, wds)
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	spec := shard.Spec{Format: "images", URIs: []string{filepath.Join(root, "imagenet-sample")}, Image: rrc32}
	info, err := c.Describe(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	f := info.Schema.Field(0)
	if info.Rows != 143 || f.Name != "image" || !strings.Contains(f.Metadata.String(), decode.TensorName) ||
		!arrow.TypeEqual(f.Type, arrow.FixedSizeListOf(32*32*3, arrow.PrimitiveTypes.Uint8)) {
		t.Fatalf("describe: %d rows, image field %s %s", info.Rows, f.Type, f.Metadata)
	}
	var rows int64
	for r := range 2 {
		br, err := c.Stream(context.Background(), StreamRequest{Spec: spec, Rank: r, World: 2, Mode: shard.Exact, BatchSize: 40})
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
			if b.Record.Column(0).(*array.FixedSizeList).ListValues().Len() != int(b.Record.NumRows())*32*32*3 {
				t.Fatal("tensor column of the wrong size")
			}
			rows += b.Record.NumRows()
			b.Record.Release()
		}
		br.Close()
	}
	if rows != 143 {
		t.Errorf("%d rows over two ranks", rows)
	}
	n, _, err := streamAll(c, StreamRequest{Spec: shard.Spec{Format: "webdataset", URIs: []string{filepath.Join(wds, "imagenet-sample-*.tar")},
		Image: rrc32}, World: 1, BatchSize: 7})
	if err != nil || n != 24 {
		t.Errorf("webdataset: %d rows, %v", n, err)
	}
	// A transform list that leaves sizes open is refused before any work.
	bad := *rrc32
	bad.Ops = []decode.Op{{Kind: decode.Resize, Height: 64}}
	if _, err := c.Describe(context.Background(), shard.Spec{Format: "images", URIs: spec.URIs, Image: &bad}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("open-sized transforms: %v", err)
	}
	bad = *rrc32
	bad.Column = "label"
	if _, err := c.Describe(context.Background(), shard.Spec{Format: "images", URIs: spec.URIs, Image: &bad}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("decoding an int column: %v", err)
	}
}

// Every corrupt image ends its session with DATA_LOSS naming the file, or is
// skipped and counted; the daemon serves on either way.
func TestBadImagesOverSocket(t *testing.T) {
	dir := t.TempDir()
	var bad []string
	for _, row := range corpora.Expectations(t, "bad-images", "EXPECTATIONS.tsv") {
		if strings.HasPrefix(row[1], "MALFORMED") || strings.HasPrefix(row[1], "DECOMPRESSION BOMB") {
			bad = append(bad, row[0])
		}
	}
	good := decodeable(t)
	for i, f := range append(append([]string{}, good...), bad...) {
		data, err := os.ReadFile(corpora.Path(t, f))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "c", fmt.Sprintf("%03d-%s", i, filepath.Base(f)))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := startServer(t, dir)
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	spec := shard.Spec{Format: "images", URIs: []string{dir}, Image: rrc32}
	_, _, err = streamAll(c, StreamRequest{Spec: spec, World: 1, BatchSize: 16})
	st := status.Convert(err)
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if st.Code() != codes.DataLoss && st.Code() != codes.Unimplemented || info == nil || !strings.HasPrefix(info.Metadata["file"], dir) {
		t.Fatalf("raise: %v (%+v)", err, info)
	}
	spec.OnError = shard.Skip
	rows, skipped, err := streamAll(c, StreamRequest{Spec: spec, World: 1, BatchSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	if skipped != int64(len(bad)) || rows != int64(len(good)) {
		t.Errorf("skip: %d rows, %d skipped; want %d and %d", rows, skipped, len(good), len(bad))
	}
	if _, err := c.Version(context.Background()); err != nil {
		t.Errorf("the daemon no longer answers: %v", err)
	}
}

// decodeable lists a few valid images of different kinds.
func decodeable(t *testing.T) []string {
	t.Helper()
	return []string{
		"images/tricky/go-stdlib/video-001.cmyk.jpeg",
		"images/tricky/go-stdlib/video-005.gray.png",
		"images/tricky/libjpeg-turbo/monkey16.png",
		"images/tricky/pngsuite/basn3p08.png",
		"images/tricky/exif-orientation/Portrait_5.jpg",
		"images/tricky/jpeg-decoder/tower_progressive.jpg",
	}
}

// Specs that read the same files alike share a dataset, its cached blocks and
// its prepared epochs; what differs between them must not leak across: the
// images a spec makes (a prepared epoch of another image spec is not its
// epoch), the columns it selects (block cache keys of image folders), and
// the shuffle and images of the request that Write and GroupBy serve.
func TestImageSpecsShareNoOutput(t *testing.T) {
	root := corpora.Path(t, "images")
	store, err := shard.NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	c64, err := cache.New(cache.Options{Budget: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c64.Close()
	srv := startServerDeps(t, Options{Socket: filepath.Join(t.TempDir(), "d.sock")},
		Deps{Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(2), Cache: c64})
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	folder := filepath.Join(root, "imagenet-sample")
	a := shard.Spec{Format: "images", URIs: []string{folder}, Image: rrc32}
	b := a
	b.Image = &decode.Spec{Column: "image", Ops: []decode.Op{{Kind: decode.CenterCrop, Height: 16, Width: 16}}}

	// A reads epoch 0, which prepares its epoch 1; B then asks for epoch 1.
	if _, _, err := streamAll(c, StreamRequest{Spec: a, World: 1, Mode: shard.Exact, BatchSize: 50}); err != nil {
		t.Fatal(err)
	}
	br, err := c.Stream(context.Background(), StreamRequest{Spec: b, World: 1, Mode: shard.Exact, BatchSize: 50, Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	first, err := br.Next()
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Record.Schema().Field(0).Type; !arrow.TypeEqual(got, arrow.FixedSizeListOf(16*16*3, arrow.PrimitiveTypes.Uint8)) {
		t.Errorf("B's epoch 1 has images of type %s, want 16x16 ones", got)
	}
	first.Record.Release()
	br.Close()

	// With image and label blocks cached, a read of the labels alone must
	// get labels, not the cached blocks' other columns.
	labels := shard.Spec{Format: "images", URIs: []string{folder}, Columns: []string{"label"}}
	lb, err := c.Stream(context.Background(), StreamRequest{Spec: labels, World: 1, Mode: shard.Exact, BatchSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	for {
		bt, err := lb.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range bt.Record.Column(0).(*array.Int64).Int64Values() {
			if v < 0 || v >= 143 {
				t.Fatalf("label %d outside the folder's 143 classes", v)
			}
		}
		bt.Record.Release()
	}

	// GroupBy of a spec without images, after A: the image column stays bytes.
	plain := shard.Spec{Format: "images", URIs: []string{folder}}
	gs, err := c.api.GroupBy(context.Background(), &feedv1.GroupByRequest{Dataset: specToProto(plain), Key: "label"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := gs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r, err := ipc.NewReader(bytes.NewReader(resp.GetArrowIpc()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	if f, _ := r.Schema().FieldsByName("image"); len(f) != 1 || f[0].Type.ID() != arrow.BINARY {
		t.Errorf("GroupBy after an image spec: image field %v, want binary", f)
	}
}
