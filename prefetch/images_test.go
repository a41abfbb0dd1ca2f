package prefetch

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/tests/corpora"
)

func openImageFolder(t *testing.T, root string) *shard.Dataset {
	t.Helper()
	store, err := shard.NewLocalStore([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := shard.Open(context.Background(), shard.Spec{Format: "images", URIs: []string{root}},
		shard.OpenOptions{Store: store, Formats: shard.DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func imageStream(t *testing.T, ds *shard.Dataset, p *decode.Pipeline, sh *shard.Shuffle, epoch int64, world, rank int, opts Options) (*Stream, error) {
	t.Helper()
	plan, err := ds.EpochPlan(sh, epoch, world, shard.Exact)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := plan.Rank(rank)
	if err != nil {
		t.Fatal(err)
	}
	_, col, err := ImageSchema(ds.Schema(), "image", p)
	if err != nil {
		t.Fatal(err)
	}
	opts.Images = &Images{Column: col, Pipeline: p, Decoder: decode.NewCPU(decode.Options{}), Epoch: epoch}
	return Start(context.Background(), ds, rp, 0, opts)
}

// pixelsByPath streams every rank and returns each image's output by path.
func pixelsByPath(t *testing.T, ds *shard.Dataset, p *decode.Pipeline, sh *shard.Shuffle, epoch int64, world int) map[string][]byte {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	out := map[string][]byte{}
	for r := range world {
		s, err := imageStream(t, ds, p, sh, epoch, world, r, Options{BatchSize: 16, Pool: NewPool(2), Mem: mem})
		if err != nil {
			t.Fatal(err)
		}
		for {
			b, err := s.Next(context.Background())
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.Close()
				t.Fatal(err)
			}
			if !b.Record.Schema().Equal(s.Schema()) {
				t.Fatalf("batch schema %s, stream says %s", b.Record.Schema(), s.Schema())
			}
			img := b.Record.Column(0).(*decode.TensorArray).Storage().(*array.FixedSizeList)
			vals := img.ListValues().(*array.Uint8).Uint8Values()
			paths := b.Record.Column(2).(*array.String)
			for i := range int(b.Record.NumRows()) {
				out[paths.Value(i)] = slices.Clone(vals[i*p.OutBytes() : (i+1)*p.OutBytes()])
			}
			b.Record.Release()
		}
		s.Close()
	}
	return out
}

// A sample's pixels depend on (seed, epoch, its row in the dataset) only:
// not on the world size, the rank, the shuffle or the batching.
func TestImagesDeterministic(t *testing.T) {
	ds := openImageFolder(t, corpora.Path(t, "images", "imagenet-sample"))
	p, err := decode.Compile(decode.Spec{Column: "image", Seed: 11, Ops: []decode.Op{
		{Kind: decode.RandomResizedCrop, Height: 24, Width: 32}, {Kind: decode.RandomHorizontalFlip, P: 0.5}}})
	if err != nil {
		t.Fatal(err)
	}
	base := pixelsByPath(t, ds, p, nil, 3, 1)
	if len(base) != 143 {
		t.Fatalf("%d images", len(base))
	}
	for _, c := range []struct {
		world int
		sh    *shard.Shuffle
	}{{3, nil}, {1, &shard.Shuffle{Seed: 5, WindowRows: 20}}, {4, &shard.Shuffle{Seed: 6}}} {
		got := pixelsByPath(t, ds, p, c.sh, 3, c.world)
		for path, px := range base {
			if !slices.Equal(got[path], px) {
				t.Fatalf("world %d shuffle %v: %s differs", c.world, c.sh, path)
			}
		}
	}
	// The same as decoding the file alone with its row's seed.
	path := ds.Listed[0].URI
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, p.OutBytes())
	errs := make([]error, 1)
	decode.NewCPU(decode.Options{}).Decode(context.Background(), p, []decode.Sample{{Data: data, Seed: p.SampleSeed(3, 0)}}, one, errs)
	if errs[0] != nil || !slices.Equal(one, base[path]) {
		t.Errorf("row 0 (%s) differs from a direct decode (%v)", path, errs[0])
	}
	other := pixelsByPath(t, ds, p, nil, 4, 1)
	same := 0
	for path, px := range base {
		if slices.Equal(other[path], px) {
			same++
		}
	}
	if same > 3 {
		t.Errorf("%d of 143 images got the same crop in the next epoch", same)
	}
}

// Bad images fail the stream with an error that names the file, or under
// skip are left out and counted; the batches still cover every good one.
func TestImagesBadInput(t *testing.T) {
	root := t.TempDir()
	good := corpora.Path(t, "images", "imagenet-sample")
	bad := []string{
		"bad-images/derived/derived_jpeg_truncated_50pct.jpg",
		"bad-images/jpeg-decoder-crashtest/max_size.jpg",
		"bad-images/pngsuite-x/xc1n0g08.png",
	}
	link := func(src, dst string) {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(good)
	for _, e := range entries[:10] {
		files, _ := filepath.Glob(filepath.Join(good, e.Name(), "*"))
		link(files[0], filepath.Join(root, "a", filepath.Base(files[0])))
	}
	for _, b := range bad {
		link(corpora.Path(t, b), filepath.Join(root, "b", filepath.Base(b)))
	}
	ds := openImageFolder(t, root)
	p, err := decode.Compile(decode.Spec{Column: "image", Ops: []decode.Op{{Kind: decode.Resize, Height: 16, Width: 16}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := imageStream(t, ds, p, nil, 0, 1, 0, Options{BatchSize: 4, Pool: NewPool(2)})
	if err != nil {
		t.Fatal(err)
	}
	var ie *shard.InputError
	for {
		b, err := s.Next(context.Background())
		if err != nil {
			if !errors.As(err, &ie) {
				t.Fatalf("want an InputError, got %v", err)
			}
			break
		}
		b.Record.Release()
	}
	s.Close()
	if !strings.HasSuffix(ie.File, "/b/"+filepath.Base(bad[0])) && !strings.HasSuffix(ie.File, "/b/"+filepath.Base(bad[1])) {
		t.Errorf("error names %s", ie.File)
	}

	s, err = imageStream(t, ds, p, &shard.Shuffle{Seed: 2}, 0, 1, 0, Options{BatchSize: 4, Pool: NewPool(2), OnError: shard.Skip})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rows, skipped, covered := 0, int64(0), int64(0)
	for {
		b, err := s.Next(context.Background())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rows += int(b.Record.NumRows())
		skipped += b.Skipped
		covered += b.Next - b.First
		paths := b.Record.Column(2).(*array.String)
		for i := range paths.Len() {
			if strings.Contains(paths.Value(i), "/b/") {
				t.Errorf("bad image %s delivered", paths.Value(i))
			}
		}
		b.Record.Release()
	}
	if rows != 10 || skipped != 3 || s.SkippedSamples() != 3 || covered != 13 {
		t.Errorf("%d rows, %d skipped (%d counted), batches cover %d samples", rows, skipped, s.SkippedSamples(), covered)
	}
}
