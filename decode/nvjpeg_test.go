//go:build nvjpeg && cgo

package decode_test

// UNVERIFIED: these need an NVIDIA GPU and the CUDA toolkit; they have never
// run (see nvjpeg.go). Run them with `make test-gpu`.

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/decode/decodetest"
)

// MinPSNRVsCPU is the stated agreement of the GPU path with the CPU path on
// RandomResizedCrop(224) of ImageNet photos: nvJPEG's IDCT and chroma
// upsampling and NPP's resampling differ from libjpeg-turbo's and ours.
const MinPSNRVsCPU = 30.0

func gpuDecoder(t testing.TB) decode.Decoder {
	t.Helper()
	d, why, err := decode.New("gpu", decode.Options{})
	if errors.Is(err, decode.ErrNoGPU) {
		t.Skipf("no GPU: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s", d.Name(), why)
	return d
}

func TestGPUConformance(t *testing.T) {
	d := gpuDecoder(t)
	defer func() { _ = d.Close() }()
	decodetest.Run(t, d)
}

func TestGPUAgreesWithCPU(t *testing.T) {
	d := gpuDecoder(t)
	defer func() { _ = d.Close() }()
	p := decodetest.Pipe(t, 5,
		decode.Op{Kind: decode.RandomResizedCrop, Height: 224, Width: 224},
		decode.Op{Kind: decode.RandomHorizontalFlip, P: 0.5})
	var samples []decode.Sample
	for i, f := range decodetest.Imagenet(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		samples = append(samples, decode.Sample{Data: b, Seed: p.SampleSeed(0, int64(i))})
	}
	got, errs := decodetest.DecodeAll(context.Background(), d, p, samples)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	want, errs := decodetest.DecodeAll(context.Background(), decode.NewCPU(decode.Options{}), p, samples)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	n := p.OutBytes()
	worst := 1000.0
	for i := range samples {
		db := decodetest.PSNR(got[i*n:(i+1)*n], want[i*n:(i+1)*n])
		worst = min(worst, db)
		if db < MinPSNRVsCPU {
			t.Errorf("sample %d: PSNR %.1f dB against the CPU path, want >= %.0f", i, db, MinPSNRVsCPU)
		}
	}
	t.Logf("worst PSNR against the CPU path: %.1f dB over %d images", worst, len(samples))
}
