package decode

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/loaderd/loaderd/tests/corpora"
)

// seedImages adds the corpora's small images, good and bad, as fuzz seeds.
func seedImages(f *testing.F) {
	n := 0
	for _, dir := range []string{"images/tricky", "bad-images"} {
		err := filepath.Walk(corpora.Path(f, dir), func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || info.Size() > 64<<10 {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			f.Add(data)
			n++
			return nil
		})
		if err != nil {
			f.Fatal(err)
		}
	}
	if n < 100 {
		f.Fatalf("only %d seeds", n)
	}
}

// FuzzParseHeader: any bytes give a header or an error, never a panic, and
// an accepted header has a usable size.
func FuzzParseHeader(f *testing.F) {
	seedImages(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHeader(data)
		if err != nil {
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error is not a *Error: %v", err)
			}
			return
		}
		if h.Width <= 0 || h.Height <= 0 || h.Orientation < 1 || h.Orientation > 8 {
			t.Fatalf("accepted header %+v", h)
		}
	})
}

// FuzzDecode runs whole samples through the decoder: crops, orientation and
// resampling must stay inside their buffers whatever the header claims.
func FuzzDecode(f *testing.F) {
	seedImages(f)
	p, err := Compile(Spec{Column: "image", Ops: []Op{
		{Kind: RandomResizedCrop, Height: 16, Width: 12}, {Kind: RandomHorizontalFlip, P: 0.5}}})
	if err != nil {
		f.Fatal(err)
	}
	// A small pixel limit keeps every input quick (a fuzzing worker that
	// overruns -fuzztime fails the run); the paths are the same as at 64 Mpx.
	d := NewCPU(Options{MaxPixels: 1 << 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := make([]byte, p.OutBytes())
		errs := make([]error, 1)
		d.Decode(context.Background(), p, []Sample{{Data: data, Seed: uint64(len(data))}}, dst, errs)
		if errors.Is(errs[0], errPanicked) {
			t.Fatal(errs[0])
		}
	})
}
