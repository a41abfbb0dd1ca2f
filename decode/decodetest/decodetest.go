// Package decodetest is the conformance suite of decode.Decoder: every
// implementation (the CPU one in both its builds, a GPU one) runs Run over the
// shared image corpora. It checks shapes and pixels against an independent
// reference (Go's and x/image's decoders, x/image/draw's bilinear filter,
// orientation applied by hand), the crops against Pipeline.Geometry, EXIF
// orientation, determinism, and that every corrupt file fails cleanly.
package decodetest

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // reference decoders
	_ "image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/tests/corpora"
	_ "golang.org/x/image/bmp"
	"golang.org/x/image/draw"
	_ "golang.org/x/image/tiff"
	_ "golang.org/x/image/webp"
)

// Bounds of agreement with the reference. JPEG decoders differ in chroma
// upsampling and, where an implementation decodes at a reduced DCT scale,
// in their downscaling filter; PNG pixels are exact and only the resampling
// filters differ.
const (
	MinPSNRJPEG = 25.0
	MinPSNRPNG  = 30.0
)

// Run runs the suite against d.
func Run(t *testing.T, d decode.Decoder) {
	t.Run("TrickyImages", func(t *testing.T) { testTricky(t, d) })
	t.Run("RandomCropsFollowGeometry", func(t *testing.T) { testGeometry(t, d) })
	t.Run("ExifOrientation", func(t *testing.T) { testExif(t, d) })
	t.Run("Deterministic", func(t *testing.T) { testDeterministic(t, d) })
	t.Run("Normalize", func(t *testing.T) { testNormalize(t, d) })
	t.Run("CenterCropPads", func(t *testing.T) { testPadding(t, d) })
	t.Run("BadImages", func(t *testing.T) { testBad(t, d) })
	t.Run("Cancelled", func(t *testing.T) { testCancelled(t, d) })
}

// Pipe compiles ops or fails the test.
func Pipe(t testing.TB, seed uint64, ops ...decode.Op) *decode.Pipeline {
	t.Helper()
	p, err := decode.Compile(decode.Spec{Column: "image", Ops: ops, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// DecodeAll decodes samples in batches of d.Batch() (the whole slice for 0),
// as the daemon does, and returns every output and error.
func DecodeAll(ctx context.Context, d decode.Decoder, p *decode.Pipeline, samples []decode.Sample) ([]byte, []error) {
	dst := make([]byte, len(samples)*p.OutBytes())
	errs := make([]error, len(samples))
	step := d.Batch()
	if step <= 0 {
		step = len(samples)
	}
	for i := 0; i < len(samples); i += step {
		j := min(i+step, len(samples))
		d.Decode(ctx, p, samples[i:j], dst[i*p.OutBytes():j*p.OutBytes()], errs[i:j])
	}
	return dst, errs
}

func decodeOne(d decode.Decoder, p *decode.Pipeline, data []byte, seed uint64) ([]byte, error) {
	out, errs := DecodeAll(context.Background(), d, p, []decode.Sample{{Data: data, Seed: seed}})
	return out, errs[0]
}

// mayBeUnsupported are valid files a decoder may refuse as unsupported: the
// codings Go's decoder lacks (12-bit, lossless and arithmetic JPEG, odd
// subsampling), and damaged files some decoders accept.
func mayBeUnsupported(status string) bool {
	return strings.Contains(status, "unsupported") || strings.Contains(status, "12-bit") ||
		strings.Contains(status, "arithmetic") || strings.Contains(status, "Go stdlib rejects") ||
		strings.Contains(status, "damaged") || strings.Contains(status, "partial")
}

func testTricky(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 0, decode.Op{Kind: decode.Resize, Height: 40, Width: 48})
	checked := 0
	for _, row := range corpora.Expectations(t, "images", "EXPECTATIONS.tsv") {
		file, status := row[0], row[1]
		t.Run(filepath.Base(file), func(t *testing.T) {
			data := read(t, corpora.Path(t, file))
			out, err := decodeOne(d, p, data, 0)
			if err != nil {
				var de *decode.Error
				if !errors.As(err, &de) {
					t.Fatalf("error is not a *decode.Error: %v", err)
				}
				if mayBeUnsupported(status) {
					t.Logf("refused (allowed for %q): %v", status, err)
					return
				}
				t.Fatalf("valid image failed: %v", err)
			}
			ref, ok := reference(t, data, 48, 40, nil)
			if !ok {
				return // no reference decoder reads it
			}
			min := MinPSNRPNG
			if isJPEG(data) {
				min = MinPSNRJPEG
			}
			got := PSNR(out, ref)
			if got < min {
				t.Errorf("PSNR %.1f dB against the reference, want >= %.0f", got, min)
			}
			t.Logf("PSNR %.1f dB", got)
			checked++
		})
	}
	if checked < 150 {
		t.Errorf("only %d tricky images compared with a reference", checked)
	}
}

// testGeometry checks random crops and flips against a reference built from
// the pipeline's own Geometry: the crop, resize and flip are done by hand on
// a full reference decode.
func testGeometry(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 7,
		decode.Op{Kind: decode.RandomResizedCrop, Height: 56, Width: 64},
		decode.Op{Kind: decode.RandomHorizontalFlip, P: 0.5})
	files := append(Imagenet(t)[:20], corpora.Path(t, "images", "tricky", "png-photos", "kodim23.png"),
		corpora.Path(t, "images", "tricky", "jpeg-decoder", "tower_progressive.jpg"),
		corpora.Path(t, "images", "tricky", "go-stdlib", "video-001.cmyk.jpeg"),
		corpora.Path(t, "images", "tricky", "exif-orientation", "Landscape_6.jpg"))
	flips := 0
	for i, f := range files {
		data := read(t, f)
		for s := range uint64(3) {
			seed := p.SampleSeed(int64(s), int64(i))
			out, err := decodeOne(d, p, data, seed)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			cfg := header(t, data)
			w, h := cfg.Oriented()
			g := p.Geometry(seed, w, h)
			if g.Flip {
				flips++
			}
			ref, ok := reference(t, data, 64, 56, &g)
			if !ok {
				t.Fatalf("%s: no reference", f)
			}
			min := MinPSNRPNG
			if isJPEG(data) {
				min = MinPSNRJPEG
			}
			if got := PSNR(out, ref); got < min {
				t.Errorf("%s seed %d (%+v): PSNR %.1f dB, want >= %.0f", filepath.Base(f), seed, g, got, min)
			}
		}
	}
	if flips == 0 || flips == 3*len(files) {
		t.Errorf("%d of %d samples flipped with p=0.5", flips, 3*len(files))
	}
}

// testExif: the EXIF examples show one picture stored in every orientation;
// after orientation all must look alike.
func testExif(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 0, decode.Op{Kind: decode.Resize, Height: 60, Width: 90})
	dir := corpora.Path(t, "images", "tricky", "exif-orientation")
	base, err := decodeOne(d, p, read(t, filepath.Join(dir, "Landscape_1.jpg")), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"Landscape_3.jpg", "Landscape_6.jpg", "Landscape_8.jpg"} {
		out, err := decodeOne(d, p, read(t, filepath.Join(dir, n)), 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := PSNR(out, base); got < 30 {
			t.Errorf("%s after orientation: PSNR %.1f dB against Landscape_1, want >= 30", n, got)
		}
	}
	pp := Pipe(t, 0, decode.Op{Kind: decode.Resize, Height: 90, Width: 60})
	p5, err := decodeOne(d, pp, read(t, filepath.Join(dir, "Portrait_5.jpg")), 0)
	if err != nil {
		t.Fatal(err)
	}
	p6, err := decodeOne(d, pp, read(t, filepath.Join(dir, "Portrait_6.jpg")), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := PSNR(p5, p6); got < 30 {
		t.Errorf("Portrait_5 and _6 after orientation: PSNR %.1f dB, want >= 30", got)
	}
}

func testDeterministic(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 3,
		decode.Op{Kind: decode.RandomResizedCrop, Height: 32, Width: 32},
		decode.Op{Kind: decode.RandomHorizontalFlip, P: 0.5})
	files := Imagenet(t)[:16]
	var samples []decode.Sample
	for i, f := range files {
		samples = append(samples, decode.Sample{Data: read(t, f), Seed: p.SampleSeed(0, int64(i))})
	}
	a, errs := DecodeAll(context.Background(), d, p, samples)
	checkNil(t, errs)
	b, errs := DecodeAll(context.Background(), d, p, samples)
	checkNil(t, errs)
	if !slices.Equal(a, b) {
		t.Fatal("the same samples and seeds gave different pixels")
	}
	// One by one, as a different batching would, gives the same.
	n := p.OutBytes()
	for i, s := range samples {
		out, err := decodeOne(d, p, s.Data, s.Seed)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(out, a[i*n:(i+1)*n]) {
			t.Fatalf("sample %d differs when decoded alone", i)
		}
	}
	for i := range samples {
		samples[i].Seed = p.SampleSeed(1, int64(i))
	}
	c, errs := DecodeAll(context.Background(), d, p, samples)
	checkNil(t, errs)
	same := 0
	for i := range samples {
		if slices.Equal(a[i*n:(i+1)*n], c[i*n:(i+1)*n]) {
			same++
		}
	}
	if same > 1 {
		t.Errorf("%d of %d samples got the same crop in another epoch", same, len(samples))
	}
}

func testNormalize(t *testing.T, d decode.Decoder) {
	ops := []decode.Op{{Kind: decode.Resize, Height: 24}, {Kind: decode.CenterCrop, Height: 20, Width: 22}}
	plain := Pipe(t, 0, ops...)
	mean, std := []float64{0.485, 0.456, 0.406}, []float64{0.229, 0.224, 0.225}
	norm := Pipe(t, 0, append(slices.Clone(ops), decode.Op{Kind: decode.Normalize, Mean: mean, Std: std})...)
	if got, want := norm.Shape(), []int64{3, 20, 22}; !slices.Equal(got, want) {
		t.Fatalf("normalized shape %v, want %v", got, want)
	}
	data := read(t, Imagenet(t)[0])
	u8, err := decodeOne(d, plain, data, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := decodeOne(d, norm, data, 0)
	if err != nil {
		t.Fatal(err)
	}
	vals := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(f))), len(f)/4)
	hw := 20 * 22
	for c := range 3 {
		for i := range hw {
			want := (float64(u8[i*3+c])/255 - mean[c]) / std[c]
			if got := float64(vals[c*hw+i]); math.Abs(got-want) > 1e-4 {
				t.Fatalf("channel %d pixel %d: %v, want %v", c, i, got, want)
			}
		}
	}
}

func testPadding(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 0, decode.Op{Kind: decode.CenterCrop, Height: 12, Width: 16})
	data := read(t, corpora.Path(t, "images", "tricky", "jpeg-decoder", "mozilla_jpg-size-7x7.jpg"))
	out, err := decodeOne(d, p, data, 0)
	if err != nil {
		t.Fatal(err)
	}
	// torchvision pads (16-7)//2 = 4 columns left, (12-7)//2 = 2 rows top.
	for y := range 12 {
		for x := range 16 {
			inside := x >= 4 && x < 11 && y >= 2 && y < 9
			px := out[(y*16+x)*3 : (y*16+x)*3+3]
			if !inside && (px[0] != 0 || px[1] != 0 || px[2] != 0) {
				t.Fatalf("padding pixel (%d, %d) is %v, want 0", x, y, px)
			}
		}
	}
	// The content is the image itself, unscaled.
	whole, err := decodeOne(d, Pipe(t, 0, decode.Op{Kind: decode.Resize, Height: 7, Width: 7}), data, 0)
	if err != nil {
		t.Fatal(err)
	}
	content := make([]byte, 0, 7*7*3)
	for y := 2; y < 9; y++ {
		content = append(content, out[(y*16+4)*3:(y*16+11)*3]...)
	}
	if !slices.Equal(content, whole) {
		t.Errorf("padded content differs from the image")
	}
}

// testBad: every malformed file fails with a *decode.Error (too-large ones
// with ErrTooLarge, before decoding); damaged files that some decoders
// accept may pass. Nothing panics, whatever the bytes.
func testBad(t *testing.T, d decode.Decoder) {
	p := Pipe(t, 0, decode.Op{Kind: decode.RandomResizedCrop, Height: 32, Width: 32})
	failed := 0
	for _, row := range corpora.Expectations(t, "bad-images", "EXPECTATIONS.tsv") {
		file, status := row[0], row[1]
		data := read(t, corpora.Path(t, file))
		_, err := decodeOne(d, p, data, 1)
		malformed := strings.HasPrefix(status, "MALFORMED") || strings.HasPrefix(status, "DECOMPRESSION BOMB")
		if err == nil {
			if malformed {
				t.Errorf("%s (%s): decoded without error", file, status)
			}
			continue
		}
		failed++
		var de *decode.Error
		if !errors.As(err, &de) {
			t.Errorf("%s: error is not a *decode.Error: %v", file, err)
		}
		if strings.HasPrefix(status, "DECOMPRESSION BOMB") && !errors.Is(err, decode.ErrTooLarge) {
			t.Errorf("%s: want ErrTooLarge, got %v", file, err)
		}
	}
	if failed < 100 {
		t.Errorf("only %d bad images failed", failed)
	}
}

func testCancelled(t *testing.T, d decode.Decoder) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := Pipe(t, 0, decode.Op{Kind: decode.Resize, Height: 8, Width: 8})
	data := read(t, Imagenet(t)[0])
	_, errs := DecodeAll(ctx, d, p, []decode.Sample{{Data: data}, {Data: data}})
	for i, err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("sample %d: %v, want context.Canceled", i, err)
		}
	}
}

func checkNil(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
	}
}

// Imagenet lists the ImageNet sample photos, sorted.
func Imagenet(t testing.TB) []string {
	files, err := filepath.Glob(corpora.Path(t, "images", "imagenet-sample", "*", "*"))
	if err != nil || len(files) < 100 {
		t.Fatalf("imagenet-sample: %d files, %v", len(files), err)
	}
	return files
}

func read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isJPEG(b []byte) bool { return len(b) > 2 && b[0] == 0xff && b[1] == 0xd8 }

func header(t testing.TB, data []byte) decode.Header {
	t.Helper()
	h, err := decode.ParseHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// reference decodes data with Go's and x/image's decoders, applies the EXIF
// orientation by hand, takes g's crop (or the whole image), scales it to
// w × h with x/image/draw's bilinear filter and flips it as g says. ok is
// false when no reference decoder reads the file.
func reference(t testing.TB, data []byte, w, h int, g *decode.Geometry) ([]byte, bool) {
	t.Helper()
	img, _, err := image.Decode(strings.NewReader(string(data)))
	if err != nil {
		return nil, false
	}
	hd := header(t, data)
	src := orientImage(img, hd.Orientation)
	sr := src.Bounds()
	dr := image.Rect(0, 0, w, h)
	if g != nil {
		sr = image.Rect(int(math.Round(g.SX0)), int(math.Round(g.SY0)), int(math.Round(g.SX1)), int(math.Round(g.SY1)))
		dr = image.Rect(g.X0, g.Y0, g.X1, g.Y1)
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	draw.BiLinear.Scale(dst, dr, src, sr, draw.Src, nil)
	out := make([]byte, 0, w*h*3)
	for y := range h {
		for x := range w {
			xx := x
			if g != nil && g.Flip && x >= g.X0 && x < g.X1 {
				xx = g.X0 + g.X1 - 1 - x
			}
			c := dst.NRGBAAt(xx, y)
			out = append(out, c.R, c.G, c.B)
		}
	}
	return out, true
}

// orientImage returns img as displayed under EXIF orientation o, as RGB with
// alpha dropped (not composited) and 16-bit samples cut to their high byte.
func orientImage(img image.Image, o int) *image.NRGBA {
	b := img.Bounds()
	W, H := b.Dx(), b.Dy()
	ow, oh := W, H
	if o >= 5 {
		ow, oh = H, W
	}
	out := image.NewNRGBA(image.Rect(0, 0, ow, oh))
	for y := range oh {
		for x := range ow {
			var sx, sy int
			switch o {
			case 2:
				sx, sy = W-1-x, y
			case 3:
				sx, sy = W-1-x, H-1-y
			case 4:
				sx, sy = x, H-1-y
			case 5:
				sx, sy = y, x
			case 6:
				sx, sy = y, H-1-x
			case 7:
				sx, sy = W-1-y, H-1-x
			case 8:
				sx, sy = W-1-y, x
			default:
				sx, sy = x, y
			}
			out.SetNRGBA(x, y, rgbOf(img.At(b.Min.X+sx, b.Min.Y+sy)))
		}
	}
	return out
}

func rgbOf(c color.Color) color.NRGBA {
	switch v := c.(type) {
	case color.NRGBA:
		v.A = 255
		return v
	case color.NRGBA64:
		return color.NRGBA{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8), 255}
	case color.Gray16:
		return color.NRGBA{uint8(v.Y >> 8), uint8(v.Y >> 8), uint8(v.Y >> 8), 255}
	case color.RGBA64:
		if v.A == 0xffff {
			return color.NRGBA{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8), 255}
		}
	}
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	n.A = 255
	return n
}

// PSNR is the peak signal-to-noise ratio of two uint8 buffers, in dB
// (+Inf when equal).
func PSNR(a, b []byte) float64 {
	if len(a) != len(b) {
		panic(fmt.Sprintf("PSNR of %d and %d bytes", len(a), len(b)))
	}
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
