package decode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"runtime"
	"strings"
	"sync"
	"time"
)

// GPU is one NVIDIA GPU as NVML describes it.
type GPU struct {
	Index       int
	Name        string // e.g. "NVIDIA H100 80GB HBM3"
	UUID        string
	MemoryBytes uint64
	// Compute capability, e.g. 9.0 for Hopper.
	Major, Minor int
}

// Discovery is what GPU discovery found at start: the driver and its GPUs,
// or why there are none usable (Err). A machine without a driver is not an
// error of the daemon, only a reason to decode on the CPU.
type Discovery struct {
	Driver     string // the kernel driver's version, e.g. "550.54.15"
	CUDADriver int    // the CUDA version the driver supports, e.g. 12040
	GPUs       []GPU
	Err        error
}

// Summary is one line for logs: the GPUs found, or why none.
func (d Discovery) Summary() string {
	if d.Err != nil {
		return d.Err.Error()
	}
	if len(d.GPUs) == 0 {
		return "no NVIDIA GPU (driver " + d.Driver + " lists none)"
	}
	names := make([]string, len(d.GPUs))
	for i, g := range d.GPUs {
		names[i] = fmt.Sprintf("%d: %s, %d GiB, sm_%d%d", g.Index, g.Name, g.MemoryBytes>>30, g.Major, g.Minor)
	}
	return fmt.Sprintf("%d NVIDIA GPU(s), driver %s, CUDA %d.%d: %s", len(d.GPUs), d.Driver,
		d.CUDADriver/1000, d.CUDADriver%1000/10, strings.Join(names, "; "))
}

// usable says why the GPUs cannot be used, or nil.
func (d Discovery) usable() error {
	if d.Err != nil {
		return d.Err
	}
	if len(d.GPUs) == 0 {
		return errors.New("the NVIDIA driver lists no GPU")
	}
	return nil
}

// gpuBuilder makes the GPU decoder over the discovered GPUs; nil in a build
// without one (see nogpu.go and nvjpeg.go).
type gpuBuilder func(Options, Discovery) (Decoder, error)

// New returns the decoder named by kind: "cpu", "gpu" or "auto" (the GPU when
// one is present, this build can decode on it, and it decodes faster than the
// CPU on a short trial; else the CPU). The second result says why, for the
// one log line at start. "gpu" without a usable GPU is an error naming why.
// opts.Discovery is what GPU discovery found; nil runs DiscoverGPUs.
func New(kind string, opts Options) (Decoder, string, error) {
	return choose(kind, opts, newGPU, trial)
}

// trialFunc measures a decoder's throughput in images a second.
type trialFunc func(Decoder) (float64, error)

func choose(kind string, opts Options, build gpuBuilder, measure trialFunc) (Decoder, string, error) {
	switch kind {
	case "cpu":
		return NewCPU(opts), "asked for (--decode cpu)", nil
	case "auto", "", "gpu":
	default:
		return nil, "", fmt.Errorf("--decode %q: want cpu, gpu or auto", kind)
	}
	disc := opts.Discovery
	if disc == nil {
		d := DiscoverGPUs()
		disc = &d
	}
	why := disc.usable()
	if why == nil && build == nil {
		why = fmt.Errorf("found %s, but this build of loaderd has no GPU decoder (build it with NVJPEG=1 and the CUDA toolkit)", disc.Summary())
	}
	var gpu Decoder
	if why == nil {
		var err error
		if gpu, err = build(opts, *disc); err != nil {
			why = fmt.Errorf("found %s, but its decoder failed to start: %w", disc.Summary(), err)
		}
	}
	if why != nil {
		if kind == "gpu" {
			return nil, "", fmt.Errorf("--decode gpu: %w: %w (use --decode cpu or auto)", ErrNoGPU, why)
		}
		return NewCPU(opts), "auto: CPU, as " + why.Error(), nil
	}
	if kind == "gpu" {
		return gpu, "asked for (--decode gpu): " + disc.Summary(), nil
	}
	cpu := NewCPU(opts)
	g, err := measure(gpu)
	if err != nil {
		_ = gpu.Close()
		return cpu, fmt.Sprintf("auto: CPU, as the GPU decoder failed its trial: %v", err), nil
	}
	c, err := measure(cpu)
	if err != nil { // the CPU decoder failing on our own image is a bug
		_ = gpu.Close()
		return nil, "", fmt.Errorf("decode: CPU trial: %w", err)
	}
	if g <= c {
		_ = gpu.Close()
		return cpu, fmt.Sprintf("auto: CPU, as it decoded %.0f img/s on a trial and the GPU %.0f (%s)", c, g, disc.Summary()), nil
	}
	return gpu, fmt.Sprintf("auto: GPU, as it decoded %.0f img/s on a trial and the CPU %.0f (%s)", g, c, disc.Summary()), nil
}

// Trial images: ImageNet-sized JPEGs made at start, so the trial needs no
// files. A smooth pattern with noise, so that entropy decoding has work like
// a photo's.
const (
	trialImages  = 64
	trialRounds  = 3
	trialW       = 500
	trialH       = 375
	trialQuality = 90
)

// trial measures d on the training pipeline (RandomResizedCrop(224) and a
// flip) as the daemon runs it: batches of trialImages, split over every core
// for a decoder that wants it; the best of trialRounds rounds after a warm-up.
func trial(d Decoder) (float64, error) {
	data, err := trialJPEG(trialW, trialH)
	if err != nil {
		return 0, err
	}
	p, err := Compile(Spec{Column: "image", Ops: []Op{
		{Kind: RandomResizedCrop, Height: 224, Width: 224},
		{Kind: RandomHorizontalFlip, P: 0.5},
	}})
	if err != nil {
		return 0, err
	}
	samples := make([]Sample, trialImages)
	for i := range samples {
		samples[i] = Sample{Data: data, Seed: p.SampleSeed(0, int64(i))}
	}
	dst := make([]byte, len(samples)*p.OutBytes())
	errs := make([]error, len(samples))
	best := 0.0
	for r := range trialRounds + 1 {
		start := time.Now()
		decodeParallel(context.Background(), d, p, samples, dst, errs)
		el := time.Since(start)
		if err := errors.Join(errs...); err != nil {
			return 0, err
		}
		if r > 0 { // the first round warms up
			best = max(best, float64(len(samples))/el.Seconds())
		}
	}
	return best, nil
}

// decodeParallel decodes samples as the daemon's image stage does: in one
// call for a decoder that batches, else spread over GOMAXPROCS goroutines.
func decodeParallel(ctx context.Context, d Decoder, p *Pipeline, samples []Sample, dst []byte, errs []error) {
	step := d.Batch()
	if step <= 0 {
		d.Decode(ctx, p, samples, dst, errs)
		return
	}
	per := p.OutBytes()
	chunk := max(step, (len(samples)+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for lo := 0; lo < len(samples); lo += chunk {
		hi := min(lo+chunk, len(samples))
		wg.Go(func() { d.Decode(ctx, p, samples[lo:hi], dst[lo*per:hi*per], errs[lo:hi]) })
	}
	wg.Wait()
}

// trialJPEG encodes a w × h test photo.
func trialJPEG(w, h int) ([]byte, error) {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	var s uint64 = 1
	for y := range h {
		for x := range w {
			s = s*6364136223846793005 + 1442695040888963407 // a fixed LCG: the same image each run
			n := uint8(s >> 59)
			img.SetRGBA(x, y, color.RGBA{uint8(x*255/w) + n, uint8(y*255/h) + n, uint8((x+y)*255/(w+h)) ^ n, 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: trialQuality}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
