package decode

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/loaderd/loaderd/tests/corpora"
	"go.uber.org/goleak"
)

// softLane does on the CPU what the GPU lane does with nvJPEG and NPP (a
// whole decode, an integer ROI, a resize, a mirror), so that the host half of
// the GPU decoder (planning, chunking, orientation, padding, normalization,
// the CPU fallback) runs the conformance suite on a machine without a GPU.
// What it cannot check is the device code itself: see nvjpeg.go.
type softLane struct {
	out   []byte
	rs    resampler
	calls *atomic.Int64
	// fail fails every call whose number (from 1) it says.
	fail func(call int64) bool
}

func (l *softLane) decode(data [][]byte, jobs []job) ([]byte, error) {
	call := l.calls.Add(1)
	if l.fail != nil && l.fail(call) {
		return nil, fmt.Errorf("softLane: call %d fails (as a batch with a corrupt image does)", call)
	}
	total := 0
	for _, j := range jobs {
		total += j.outBytes
	}
	l.out = grow(l.out, total)
	off := 0
	for k, j := range jobs {
		img, err := decodeImage(JPEG, data[k])
		if err != nil {
			return nil, err
		}
		rgb := make([]byte, j.h.Width*j.h.Height*3)
		toRGB(img, 0, 0, j.h.Width, j.h.Height, rgb)
		src := pixels{pix: rgb[(j.y*j.h.Width+j.x)*3:], w: j.w, h: j.ht, stride: j.h.Width * 3, ch: 3}
		dst := l.out[off : off+j.outBytes]
		l.rs.resample(dst, j.rw*3, src, 0, 0, float64(j.w), float64(j.ht), j.rw, j.rh)
		if j.mirror {
			mirror(dst, j.rw*3, j.rw, j.rh)
		}
		off += j.outBytes
	}
	return l.out, nil
}

func (l *softLane) close() error { return nil }

// softTakes is what the nvJPEG decoder takes: baseline JPEGs, gray or YCbCr.
func softTakes(h Header) bool { return h.Format == JPEG && !h.Progressive && h.Components != 4 }

func newSoft(lanes int, arena int64, fail func(int64) bool) (*batched, *atomic.Int64) {
	var calls atomic.Int64
	ls := make([]lane, lanes)
	for i := range ls {
		ls[i] = &softLane{calls: &calls, fail: fail}
	}
	return newBatched(Options{}, "soft gpu", ls, arena, softTakes), &calls
}

func imagenet(t testing.TB, n int) []Sample {
	t.Helper()
	var out []Sample
	files, err := filepath.Glob(corpora.Path(t, "images", "imagenet-sample", "*", "*"))
	if err != nil || len(files) < n {
		t.Fatalf("imagenet-sample: %d files, %v", len(files), err)
	}
	for i, f := range files[:n] {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Sample{Data: b, Seed: uint64(i)})
	}
	return out
}

func psnr(a, b []byte) float64 {
	var se float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		se += d * d
	}
	if se == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(255*255/(se/float64(len(a))))
}

// NewSoftGPU is the batched decoder over software lanes, for the conformance
// suite in package decode_test.
func NewSoftGPU() Decoder {
	d, _ := newSoft(2, 16<<20, nil)
	return d
}

// The batched decoder against the CPU decoder, sample by sample: the same
// geometry, orientation and padding, pixels within the resampling's
// difference (a whole-pixel ROI here, a sub-pixel box there).
func TestBatchedMatchesCPU(t *testing.T) {
	defer goleak.VerifyNone(t)
	p, err := Compile(Spec{Column: "image", Ops: []Op{
		{Kind: RandomResizedCrop, Height: 224, Width: 224}, {Kind: RandomHorizontalFlip, P: 0.5}}})
	if err != nil {
		t.Fatal(err)
	}
	samples := imagenet(t, 48)
	// A small arena: several lane calls a batch, on two lanes at once.
	d, calls := newSoft(2, 4<<20, nil)
	defer func() { _ = d.Close() }()
	got, errs := decodeAll(d, p, samples)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
	}
	want, errs := decodeAll(NewCPU(Options{}), p, samples)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if calls.Load() < 4 {
		t.Errorf("%d lane calls for 48 images in a 4 MiB arena", calls.Load())
	}
	n := p.OutBytes()
	for i := range samples {
		if db := psnr(got[i*n:(i+1)*n], want[i*n:(i+1)*n]); db < 28 {
			t.Errorf("sample %d: PSNR %.1f dB against the CPU path", i, db)
		}
	}
}

// A failed device call sends its samples to the CPU, whose results are then
// exactly the CPU's.
func TestBatchedRetriesOnCPU(t *testing.T) {
	defer goleak.VerifyNone(t)
	p, err := Compile(Spec{Column: "image", Ops: []Op{{Kind: Resize, Height: 32, Width: 32}}})
	if err != nil {
		t.Fatal(err)
	}
	samples := imagenet(t, 16)
	want, errs := decodeAll(NewCPU(Options{}), p, samples)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		fail func(int64) bool
	}{
		{"every call fails", func(int64) bool { return true }},
		{"every other call fails", func(call int64) bool { return call%2 == 1 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, _ := newSoft(1, 1<<20, c.fail)
			defer func() { _ = d.Close() }()
			got, errs := decodeAll(d, p, samples)
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if d.retried.Load() == 0 {
				t.Fatal("no sample was retried on the CPU")
			}
			n := p.OutBytes()
			exact := 0
			for i := range samples {
				if slices.Equal(got[i*n:(i+1)*n], want[i*n:(i+1)*n]) {
					exact++
				}
			}
			if exact < int(d.retried.Load()) {
				t.Errorf("%d samples retried on the CPU, but only %d equal the CPU's", d.retried.Load(), exact)
			}
		})
	}
}

func TestBatchedClosed(t *testing.T) {
	defer goleak.VerifyNone(t)
	p, err := Compile(Spec{Column: "image", Ops: []Op{{Kind: Resize, Height: 8, Width: 8}}})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := newSoft(2, 1<<30, nil)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	_, errs := decodeAll(d, p, imagenet(t, 2))
	for i, err := range errs {
		if !errors.Is(err, errClosed) {
			t.Errorf("sample %d after Close: %v", i, err)
		}
	}
}

func decodeAll(d Decoder, p *Pipeline, samples []Sample) ([]byte, []error) {
	dst := make([]byte, len(samples)*p.OutBytes())
	errs := make([]error, len(samples))
	decodeParallel(context.Background(), d, p, samples, dst, errs)
	return dst, errs
}
