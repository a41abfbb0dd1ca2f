package decode

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// This machine has no NVIDIA driver, so discovery takes its real failure
// path: go-nvml's dlopen of libnvidia-ml.so.1 fails and Init returns
// ERROR_LIBRARY_NOT_FOUND. On a machine with a driver the test says so and
// checks what was found instead.
func TestDiscoverGPUs(t *testing.T) {
	d := DiscoverGPUs()
	t.Logf("discovery: %s", d.Summary())
	if d.Err == nil {
		if d.Driver == "" {
			t.Errorf("the driver answered but gave no version: %+v", d)
		}
		for _, g := range d.GPUs {
			if g.Name == "" || g.MemoryBytes == 0 || g.Major == 0 {
				t.Errorf("GPU %d is described incompletely: %+v", g.Index, g)
			}
		}
		return
	}
	if !strings.Contains(d.Err.Error(), "libnvidia-ml.so.1") && !strings.Contains(d.Err.Error(), "cgo") {
		t.Errorf("discovery failed without naming the library: %v", d.Err)
	}
	if len(d.GPUs) != 0 {
		t.Errorf("failed discovery lists GPUs: %+v", d.GPUs)
	}
}

var h100 = Discovery{Driver: "550.54.15", CUDADriver: 12040,
	GPUs: []GPU{{Index: 0, Name: "NVIDIA H100 80GB HBM3", UUID: "GPU-0", MemoryBytes: 80 << 30, Major: 9}}}

// fakeGPU stands for a GPU decoder in the choice tests: the CPU decoder under
// another name, which records whether it was closed.
type fakeGPU struct {
	*CPU
	closed *atomic.Bool
}

func (f fakeGPU) Name() string { return "fake gpu" }
func (f fakeGPU) Close() error { f.closed.Store(true); return nil }

func TestChoose(t *testing.T) {
	noDriver := Discovery{Err: errors.New("no NVIDIA driver: libnvidia-ml.so.1 cannot be loaded")}
	none := Discovery{Driver: "550.54.15"}
	var closed atomic.Bool
	works := func(o Options, _ Discovery) (Decoder, error) { return fakeGPU{NewCPU(o), &closed}, nil }
	fails := func(Options, Discovery) (Decoder, error) {
		return nil, errors.New("nvjpegCreateEx: NVJPEG_STATUS_ARCH_MISMATCH")
	}
	rates := func(gpu, cpu float64) trialFunc {
		return func(d Decoder) (float64, error) {
			if d.Name() == "fake gpu" {
				return gpu, nil
			}
			return cpu, nil
		}
	}
	for _, c := range []struct {
		name, kind string
		disc       Discovery
		build      gpuBuilder
		measure    trialFunc
		want       string // the decoder's name prefix, or "error"
		why        []string
		closed     bool
	}{
		{"cpu asked", "cpu", h100, works, rates(9, 1), "cpu", []string{"--decode cpu"}, false},
		{"auto without driver", "auto", noDriver, works, nil, "cpu", []string{"auto: CPU", "libnvidia-ml.so.1"}, false},
		{"gpu without driver", "gpu", noDriver, works, nil, "error", []string{"--decode gpu", "libnvidia-ml.so.1", "--decode cpu or auto"}, false},
		{"auto without GPUs", "auto", none, works, nil, "cpu", []string{"lists no GPU"}, false},
		{"gpu without GPUs", "gpu", none, works, nil, "error", []string{"lists no GPU"}, false},
		{"auto in a build without nvJPEG", "auto", h100, nil, nil, "cpu", []string{"H100", "no GPU decoder", "NVJPEG=1"}, false},
		{"gpu in a build without nvJPEG", "gpu", h100, nil, nil, "error", []string{"H100", "no GPU decoder"}, false},
		{"auto when the decoder fails", "auto", h100, fails, nil, "cpu", []string{"failed to start", "ARCH_MISMATCH"}, false},
		{"gpu when the decoder fails", "gpu", h100, fails, nil, "error", []string{"failed to start", "ARCH_MISMATCH"}, false},
		{"gpu asked", "gpu", h100, works, nil, "fake gpu", []string{"--decode gpu", "H100"}, false},
		{"auto, GPU faster", "auto", h100, works, rates(5000, 900), "fake gpu", []string{"auto: GPU", "5000", "900"}, false},
		{"auto, GPU slower", "auto", h100, works, rates(800, 900), "cpu", []string{"auto: CPU", "800", "900"}, true},
		{"unknown kind", "tpu", h100, works, nil, "error", []string{`"tpu"`, "want cpu, gpu or auto"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			closed.Store(false)
			disc := c.disc
			d, why, err := choose(c.kind, Options{Discovery: &disc}, c.build, c.measure)
			text := why
			if c.want == "error" {
				if err == nil {
					t.Fatalf("got %s (%s), want an error", d.Name(), why)
				}
				if c.kind == "gpu" && !errors.Is(err, ErrNoGPU) {
					t.Errorf("error is not ErrNoGPU: %v", err)
				}
				text = err.Error()
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(d.Name(), c.want) {
					t.Errorf("chose %q (%s), want %s", d.Name(), why, c.want)
				}
			}
			for _, w := range c.why {
				if !strings.Contains(text, w) {
					t.Errorf("%q does not say %q", text, w)
				}
			}
			if closed.Load() != c.closed {
				t.Errorf("GPU decoder closed: %v, want %v", closed.Load(), c.closed)
			}
		})
	}
}

// New on this machine: real discovery, and this build's GPU decoder or none.
func TestNewAutoFallsBack(t *testing.T) {
	d, why, err := New("auto", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	t.Logf("auto chose %s: %s", d.Name(), why)
	disc := DiscoverGPUs()
	if disc.usable() != nil || newGPU == nil {
		if _, ok := d.(*CPU); !ok || !strings.HasPrefix(why, "auto: CPU, as ") {
			t.Errorf("no usable GPU decoder here, yet auto chose %s (%s)", d.Name(), why)
		}
		if _, _, err := New("gpu", Options{}); !errors.Is(err, ErrNoGPU) {
			t.Errorf("--decode gpu without a usable GPU: %v, want ErrNoGPU", err)
		}
	}
}

// The trial the auto choice runs, on the real CPU decoder.
func TestTrial(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes a few hundred images")
	}
	rate, err := trial(NewCPU(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if rate <= 0 {
		t.Fatalf("trial rate %v", rate)
	}
	t.Logf("CPU trial: %.0f img/s", rate)
}
