package decode

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/loaderd/loaderd/tests/corpora"
)

// benchImages are the files of $LOADERD_BENCH_IMAGES (a directory, searched
// two levels deep as image class folders are), or the ImageNet sample.
func benchImages(b *testing.B) [][]byte {
	pattern := corpora.Path(b, "images", "imagenet-sample", "*", "*")
	if d := os.Getenv("LOADERD_BENCH_IMAGES"); d != "" {
		pattern = filepath.Join(d, "*", "*")
	}
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		b.Fatalf("no images match %s: %v", pattern, err)
	}
	var out [][]byte
	for _, f := range files {
		d, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// BenchmarkDecodeOnly is the limit a pipeline can approach: whole JPEGs
// decoded to RGB with this build's library, no crop, no DCT scaling, no
// resampling, on every core (-cpu sets how many).
func BenchmarkDecodeOnly(b *testing.B) {
	data := benchImages(b)
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var w work
		for pb.Next() {
			d := data[int(next.Add(1))%len(data)]
			h, err := ParseHeader(d)
			if err != nil {
				b.Error(err)
				return
			}
			if _, _, err := w.decodeBox(h, d, 0, float64(h.Width), 0, float64(h.Height), h.Width, h.Height); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "img/s")
}

// BenchmarkRandomResizedCrop224 is the training pipeline of the image bench:
// RandomResizedCrop(224) and a flip to uint8 HWC, on every core.
func BenchmarkRandomResizedCrop224(b *testing.B) {
	data := benchImages(b)
	p, err := Compile(Spec{Column: "image", Ops: []Op{
		{Kind: RandomResizedCrop, Height: 224, Width: 224},
		{Kind: RandomHorizontalFlip, P: 0.5},
	}})
	if err != nil {
		b.Fatal(err)
	}
	d := NewCPU(Options{})
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		dst := make([]byte, p.OutBytes())
		errs := make([]error, 1)
		for pb.Next() {
			i := next.Add(1)
			d.Decode(context.Background(), p, []Sample{{Data: data[int(i)%len(data)], Seed: uint64(i)}}, dst, errs)
			if errs[0] != nil {
				b.Error(errs[0])
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "img/s")
}

// BenchmarkDecoders is decode + RandomResizedCrop(224) + flip to uint8 HWC
// on the CPU (every core) and on the GPU (whole batches), in one run, in
// batches of 256 as the daemon decodes them: make bench's gpu section prints
// the two side by side. The gpu case is skipped, saying why, where New
// finds no usable GPU decoder.
func BenchmarkDecoders(b *testing.B) {
	data := benchImages(b)
	p, err := Compile(Spec{Column: "image", Ops: []Op{
		{Kind: RandomResizedCrop, Height: 224, Width: 224},
		{Kind: RandomHorizontalFlip, P: 0.5},
	}})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 256
	run := func(b *testing.B, d Decoder) {
		b.Logf("decoder: %s", d.Name())
		samples := make([]Sample, batch)
		dst := make([]byte, batch*p.OutBytes())
		errs := make([]error, batch)
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			k := min(batch, b.N-i)
			for j := range k {
				samples[j] = Sample{Data: data[(i+j)%len(data)], Seed: uint64(i + j)}
			}
			decodeParallel(context.Background(), d, p, samples[:k], dst[:k*p.OutBytes()], errs[:k])
			for _, err := range errs[:k] {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "img/s")
	}
	b.Run("cpu", func(b *testing.B) { run(b, NewCPU(Options{})) })
	b.Run("gpu", func(b *testing.B) {
		d, _, err := New("gpu", Options{})
		if err != nil {
			b.Skip(err)
		}
		defer func() { _ = d.Close() }()
		run(b, d)
	})
}
