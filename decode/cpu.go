package decode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"runtime"
	"unsafe"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// CPU decodes on the calling goroutine: JPEG with libjpeg-turbo (or Go's
// image/jpeg in a build without it), the other formats with Go's decoders.
// The caller runs many Decode calls at once, one per core.
type CPU struct {
	opts Options
	// work recycles per-call scratch memory: decoded regions, resampling
	// buffers. Writing into memory already in use is many times faster than
	// into fresh memory on the machines we measured. A bounded free list
	// rather than a sync.Pool, which every other GC empties: the daemon's
	// batch traffic makes GCs frequent.
	work chan *work
}

// NewCPU returns the CPU decoder.
func NewCPU(opts Options) *CPU {
	opts.ensureDefaults()
	return &CPU{opts: opts, work: make(chan *work, 2*runtime.GOMAXPROCS(0))}
}

// Name implements Decoder.
func (d *CPU) Name() string { return "cpu (" + jpegLibrary + ")" }

// Batch implements Decoder: the caller spreads samples over its workers.
func (d *CPU) Batch() int { return 1 }

// Close implements Decoder.
func (d *CPU) Close() error { return nil }

// Decode implements Decoder.
func (d *CPU) Decode(ctx context.Context, p *Pipeline, samples []Sample, dst []byte, errs []error) {
	var w *work
	select {
	case w = <-d.work:
	default:
		w = new(work)
	}
	defer func() {
		select {
		case d.work <- w:
		default: // enough kept
		}
	}()
	n := p.OutBytes()
	for i, s := range samples {
		if err := ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		errs[i] = w.decode(p, s, dst[i*n:(i+1)*n], d.opts.MaxPixels)
	}
}

// errPanicked marks a sample whose decoding panicked (and was recovered).
var errPanicked = errors.New("decoder panicked")

// work is one call's scratch memory.
type work struct {
	rs      resampler
	decoded []byte // decoded pixels of the crop
	conv    []byte // the region as RGB, when the decoder gave something else
	inter   []byte // the output in stored orientation, before rotating
	out8    []byte // the uint8 output, before normalizing
}

// decode decodes one sample into out. Panics inside decoders (Go's and
// x/image's have had them on hostile input) become errors: bad input must
// never take the daemon down.
func (w *work) decode(p *Pipeline, s Sample, out []byte, maxPixels int64) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &Error{Kind: ErrCorrupt, Err: fmt.Errorf("%w: %v", errPanicked, r)}
		}
	}()
	h, g, err := prepare(p, s, maxPixels)
	if err != nil {
		return err
	}
	outH, outW := p.Size()
	stride := outW * 3
	// Where the uint8 HWC result goes: straight into out unless it must be
	// normalized afterwards.
	target := out
	if p.float {
		w.out8 = grow(w.out8, outH*stride)
		target = w.out8
	}
	if g.X0 != 0 || g.Y0 != 0 || g.X1 != outW || g.Y1 != outH {
		clear(target) // center_crop's zero padding
	}
	cw, ch := g.X1-g.X0, g.Y1-g.Y0
	if cw > 0 && ch > 0 {
		if err := w.content(h, s.Data, g, target[g.Y0*stride+g.X0*3:], stride, cw, ch); err != nil {
			return err
		}
	}
	if p.float {
		normalize(out, w.out8, outH*outW, p.scale, p.bias)
	}
	return nil
}

// prepare checks a sample's header as every decoder does, so that a bad
// image fails with the same error whichever decoder runs, and plans its
// transforms.
func prepare(p *Pipeline, s Sample, maxPixels int64) (Header, Geometry, error) {
	h, err := ParseHeader(s.Data)
	if err != nil {
		return h, Geometry{}, err
	}
	if px := int64(h.Width) * int64(h.Height); px > maxPixels {
		return h, Geometry{}, &Error{Kind: ErrTooLarge, Err: fmt.Errorf("%s of %dx%d is %d pixels, over the limit of %d",
			h.Format, h.Width, h.Height, px, maxPixels)}
	}
	if h.Format == JPEG && !h.complete(s.Data) {
		return h, Geometry{}, corrupt("JPEG is truncated: no end-of-image marker after its image data")
	}
	ow, oh := h.Oriented()
	r := rng{s: s.Seed}
	return h, p.plan(&r, ow, oh), nil
}

// content decodes the geometry's source box and resamples it into the
// content rectangle (cw × ch pixels at dst, rows stride bytes apart),
// applying the orientation and the flip.
func (w *work) content(h Header, data []byte, g Geometry, dst []byte, stride, cw, ch int) error {
	o := h.Orientation
	bx0, bx1, by0, by1, rw, rh := storedBox(h, g, cw, ch)
	src, box, err := w.decodeBox(h, data, bx0, bx1, by0, by1, rw, rh)
	if err != nil {
		return err
	}
	if o == 1 {
		w.rs.resample(dst, stride, src, box[0], box[1], box[2], box[3], cw, ch)
		if g.Flip {
			mirror(dst, stride, cw, ch)
		}
		return nil
	}
	w.inter = grow(w.inter, rw*rh*3)
	w.rs.resample(w.inter, rw*3, src, box[0], box[1], box[2], box[3], rw, rh)
	orient(dst, stride, cw, ch, w.inter, rw, rh, o, g.Flip)
	return nil
}

// storedBox maps the geometry's source box (in displayed coordinates) into
// the stored image, and says the size rw × rh the content (cw × ch) has
// before the orientation turns it.
func storedBox(h Header, g Geometry, cw, ch int) (bx0, bx1, by0, by1 float64, rw, rh int) {
	o := h.Orientation
	bx0, bx1, by0, by1 = g.SX0, g.SX1, g.SY0, g.SY1
	W, H := float64(h.Width), float64(h.Height)
	switch o {
	case 2:
		bx0, bx1 = W-g.SX1, W-g.SX0
	case 3:
		bx0, bx1, by0, by1 = W-g.SX1, W-g.SX0, H-g.SY1, H-g.SY0
	case 4:
		by0, by1 = H-g.SY1, H-g.SY0
	case 5:
		bx0, bx1, by0, by1 = g.SY0, g.SY1, g.SX0, g.SX1
	case 6:
		bx0, bx1, by0, by1 = g.SY0, g.SY1, H-g.SX1, H-g.SX0
	case 7:
		bx0, bx1, by0, by1 = W-g.SY1, W-g.SY0, H-g.SX1, H-g.SX0
	case 8:
		bx0, bx1, by0, by1 = W-g.SY1, W-g.SY0, g.SX0, g.SX1
	}
	bx0, bx1 = clampBox(bx0, bx1, W)
	by0, by1 = clampBox(by0, by1, H)
	rw, rh = cw, ch
	if o >= 5 {
		rw, rh = ch, cw
	}
	return bx0, bx1, by0, by1, rw, rh
}

func clampBox(a, b, n float64) (float64, float64) {
	a, b = max(a, 0), min(b, n)
	if b <= a { // rounding at an edge: keep one pixel
		a = min(a, n-1)
		b = a + 1
	}
	return a, b
}

// decodeBox decodes at least the box [x0, x1) × [y0, y1) of the stored image,
// which will be resampled to rw × rh. It returns RGB pixels and the box in
// their coordinates (x0, y0, x1, y1). Only the pixels of the box's hull are
// handed back, so the resampling filter treats the box's edges as the image's
// edges, as torchvision's crop-then-resize does.
func (w *work) decodeBox(h Header, data []byte, x0, x1, y0, y1 float64, rw, rh int) (pixels, [4]float64, error) {
	if h.Format == JPEG {
		if px, box, ok, err := w.turboRegion(h, data, x0, x1, y0, y1, rw, rh); ok {
			return px, box, err
		}
	}
	img, err := decodeImage(h.Format, data)
	if err != nil {
		return pixels{}, [4]float64{}, err
	}
	if b := img.Bounds(); b.Dx() != h.Width || b.Dy() != h.Height {
		return pixels{}, [4]float64{}, corrupt(fmt.Sprintf("decoded %dx%d, header says %dx%d", b.Dx(), b.Dy(), h.Width, h.Height))
	}
	ix0, iy0 := int(math.Floor(x0)), int(math.Floor(y0))
	ix1, iy1 := int(math.Ceil(x1)), int(math.Ceil(y1))
	pw, ph := ix1-ix0, iy1-iy0
	w.conv = grow(w.conv, pw*ph*3)
	toRGB(img, ix0, iy0, ix1, iy1, w.conv)
	return pixels{pix: w.conv, w: pw, h: ph, stride: pw * 3, ch: 3},
		[4]float64{x0 - float64(ix0), y0 - float64(iy0), x1 - float64(ix0), y1 - float64(iy0)}, nil
}

// dctScale is the largest libjpeg DCT scaling denominator (1/8, 1/4, 1/2)
// that still leaves the box at least rw × rh pixels, or 1.
func dctScale(bw, bh float64, rw, rh int) int {
	for _, d := range []int{8, 4, 2} {
		if bw/float64(d) >= float64(rw) && bh/float64(d) >= float64(rh) {
			return d
		}
	}
	return 1
}

func decodeImage(f Format, data []byte) (image.Image, error) {
	var img image.Image
	var err error
	r := bytes.NewReader(data)
	switch f {
	case JPEG:
		img, err = jpeg.Decode(r)
	case PNG:
		img, err = png.Decode(r)
	case WebP:
		img, err = webp.Decode(r)
	case BMP:
		img, err = bmp.Decode(r)
	case TIFF:
		img, err = tiff.Decode(r)
	default:
		return nil, unsupported("%s images are not supported", f)
	}
	if err != nil {
		kind := ErrCorrupt
		if isUnsupported(err) {
			kind = ErrUnsupported
		}
		return nil, &Error{Kind: kind, Err: fmt.Errorf("%s: %w", f, err)}
	}
	return img, nil
}

// isUnsupported reports the standard decoders' "valid but unsupported"
// errors, which are distinct types in each package.
func isUnsupported(err error) bool {
	var pe png.UnsupportedError
	var te tiff.UnsupportedError
	var je jpeg.UnsupportedError
	return errors.As(err, &pe) || errors.As(err, &te) || errors.As(err, &je) || errors.Is(err, bmp.ErrUnsupported)
}

// toRGB writes the pixels [x0, x1) × [y0, y1) of img as packed RGB. Alpha is
// dropped, not composited, as Pillow's convert("RGB") does; 16-bit samples
// keep their high byte.
func toRGB(img image.Image, x0, y0, x1, y1 int, dst []byte) {
	b := img.Bounds()
	x0, x1, y0, y1 = x0+b.Min.X, x1+b.Min.X, y0+b.Min.Y, y1+b.Min.Y
	i := 0
	switch m := img.(type) {
	case *image.YCbCr:
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				yi, ci := m.YOffset(x, y), m.COffset(x, y)
				dst[i], dst[i+1], dst[i+2] = color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
				i += 3
			}
		}
	case *image.Gray:
		for y := y0; y < y1; y++ {
			row := m.Pix[m.PixOffset(x0, y):m.PixOffset(x1, y)]
			for _, v := range row {
				dst[i], dst[i+1], dst[i+2] = v, v, v
				i += 3
			}
		}
	case *image.RGBA:
		copy4(dst, m.Pix, m.Stride, m.PixOffset(x0, y0), x1-x0, y1-y0, 4, 1)
	case *image.NRGBA:
		copy4(dst, m.Pix, m.Stride, m.PixOffset(x0, y0), x1-x0, y1-y0, 4, 1)
	case *image.RGBA64:
		copy4(dst, m.Pix, m.Stride, m.PixOffset(x0, y0), x1-x0, y1-y0, 8, 2)
	case *image.NRGBA64:
		copy4(dst, m.Pix, m.Stride, m.PixOffset(x0, y0), x1-x0, y1-y0, 8, 2)
	case *image.Gray16:
		for y := y0; y < y1; y++ {
			row := m.Pix[m.PixOffset(x0, y):m.PixOffset(x1, y)]
			for j := 0; j < len(row); j += 2 {
				v := row[j]
				dst[i], dst[i+1], dst[i+2] = v, v, v
				i += 3
			}
		}
	case *image.Paletted:
		var pal [256][3]byte
		for k, c := range m.Palette {
			n := color.NRGBAModel.Convert(c).(color.NRGBA)
			pal[k] = [3]byte{n.R, n.G, n.B}
		}
		for y := y0; y < y1; y++ {
			for _, v := range m.Pix[m.PixOffset(x0, y):m.PixOffset(x1, y)] {
				c := pal[v]
				dst[i], dst[i+1], dst[i+2] = c[0], c[1], c[2]
				i += 3
			}
		}
	case *image.CMYK:
		for y := y0; y < y1; y++ {
			row := m.Pix[m.PixOffset(x0, y):m.PixOffset(x1, y)]
			for j := 0; j < len(row); j += 4 {
				dst[i], dst[i+1], dst[i+2] = cmykToRGB(row[j], row[j+1], row[j+2], row[j+3])
				i += 3
			}
		}
	default:
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				n := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
				dst[i], dst[i+1], dst[i+2] = n.R, n.G, n.B
				i += 3
			}
		}
	}
}

// copy4 copies RGB out of 4-sample pixels of bpp bytes (sample size ss,
// big-endian: the first byte is the high one).
func copy4(dst, pix []byte, stride, off, w, h, bpp, ss int) {
	i := 0
	for y := range h {
		row := pix[off+y*stride : off+y*stride+w*bpp]
		for j := 0; j < len(row); j += bpp {
			dst[i], dst[i+1], dst[i+2] = row[j], row[j+ss], row[j+2*ss]
			i += 3
		}
	}
}

// cmykToRGB converts ink amounts (0: none) as Pillow's cmyk2rgb does.
func cmykToRGB(c, m, y, k byte) (byte, byte, byte) {
	nk := 255 - int(k)
	f := func(v byte) byte {
		t := int(v)*nk + 128
		return byte(nk - ((t>>8)+t)>>8)
	}
	return f(c), f(m), f(y)
}

// mirror reverses each of h rows of w RGB pixels.
func mirror(p []byte, stride, w, h int) {
	for y := range h {
		row := p[y*stride : y*stride+w*3]
		for i, j := 0, (w-1)*3; i < j; i, j = i+3, j-3 {
			row[i], row[j] = row[j], row[i]
			row[i+1], row[j+1] = row[j+1], row[i+1]
			row[i+2], row[j+2] = row[j+2], row[i+2]
		}
	}
}

// orient writes src (rw × rh, stored orientation) into dst (cw × ch) turned
// by EXIF orientation o, then mirrored when flip.
func orient(dst []byte, stride, cw, ch int, src []byte, rw, rh, o int, flip bool) {
	for v := range ch {
		row := dst[v*stride : v*stride+cw*3]
		for u := range cw {
			uu := u
			if flip {
				uu = cw - 1 - u
			}
			var x, y int
			switch o {
			case 2:
				x, y = rw-1-uu, v
			case 3:
				x, y = rw-1-uu, rh-1-v
			case 4:
				x, y = uu, rh-1-v
			case 5:
				x, y = v, uu
			case 6:
				x, y = v, rh-1-uu
			case 7:
				x, y = rw-1-v, rh-1-uu
			case 8:
				x, y = rw-1-v, uu
			default:
				x, y = uu, v
			}
			s := (y*rw + x) * 3
			row[u*3], row[u*3+1], row[u*3+2] = src[s], src[s+1], src[s+2]
		}
	}
}

// normalize writes n uint8 HWC pixels as float32 CHW, v*scale + bias.
func normalize(out, in []byte, n int, scale, bias [3]float32) {
	f := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(out))), 3*n)
	for c := range 3 {
		plane := f[c*n : (c+1)*n]
		s, b := scale[c], bias[c]
		for i := range plane {
			plane[i] = float32(in[i*3+c])*s + b
		}
	}
}
