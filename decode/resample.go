package decode

import "math"

// Resampling is Pillow's: a separable triangle (bilinear) filter whose support
// widens with the downscale factor (antialiasing), horizontal pass first,
// weights in 22-bit fixed point. torchvision's RandomResizedCrop and Resize on
// PIL images run exactly this, so on the same decoded pixels the outputs match
// to the bit; and it works on packed RGB bytes, with no image.Image in between.

const (
	precisionBits = 32 - 8 - 2
	half          = 1 << (precisionBits - 1)
)

// coeffs are one axis's weights: output pixel i reads n = bounds[2i+1] input
// pixels from bounds[2i] on, with weights k[i*ksize:][:n]. The same weights
// also come as exactly kw taps (the most any output reads) from start[i] on,
// kp[i*kw:] (zeros added, windows at the far edge moved inward), so that a
// kernel can run a loop of fixed length; fixed is false when the input is
// shorter than kw.
type coeffs struct {
	ksize  int
	bounds []int32
	k      []int32
	fk     []float64
	fixed  bool
	kw     int
	start  []int32
	kp     []int32
}

// compute is Pillow's precompute_coeffs and normalize_coeffs_8bpc for the
// input interval [in0, in1) of an axis of inSize pixels, onto outSize pixels.
func (c *coeffs) compute(inSize int, in0, in1 float64, outSize int) {
	scale := (in1 - in0) / float64(outSize)
	filterscale := max(scale, 1)
	support := filterscale // the triangle's support is 1
	c.ksize = int(math.Ceil(support))*2 + 1
	c.bounds = grow(c.bounds, 2*outSize)
	c.k = grow(c.k, outSize*c.ksize)
	c.fk = grow(c.fk, c.ksize)
	ss := 1 / filterscale
	for xx := range outSize {
		center := in0 + (float64(xx)+0.5)*scale
		xmin := max(int(center-support+0.5), 0)
		xmax := min(int(center+support+0.5), inSize) - xmin
		ww := 0.0
		for x := range xmax {
			w := 1 - math.Abs((float64(x+xmin)-center+0.5)*ss)
			w = max(w, 0)
			c.fk[x] = w
			ww += w
		}
		k := c.k[xx*c.ksize : (xx+1)*c.ksize]
		for x := range k {
			k[x] = 0
			if x < xmax {
				w := c.fk[x]
				if ww != 0 {
					w /= ww
				}
				k[x] = int32(0.5 + w*(1<<precisionBits)) // weights are never negative
			}
		}
		c.bounds[2*xx], c.bounds[2*xx+1] = int32(xmin), int32(max(xmax, 0))
	}
	c.kw = 1
	for xx := range outSize {
		c.kw = max(c.kw, int(c.bounds[2*xx+1]))
	}
	c.fixed = inSize >= c.kw
	if !c.fixed {
		return
	}
	c.start = grow(c.start, outSize)
	c.kp = grow(c.kp, outSize*c.kw)
	for xx := range outSize {
		xmin, n := int(c.bounds[2*xx]), int(c.bounds[2*xx+1])
		st := min(xmin, inSize-c.kw)
		c.start[xx] = int32(st)
		kp := c.kp[xx*c.kw : (xx+1)*c.kw]
		clear(kp)
		copy(kp[xmin-st:], c.k[xx*c.ksize:xx*c.ksize+n])
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

func clip8(v int32) byte {
	v >>= precisionBits
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return byte(v)
}

// resampler holds the scratch memory of resampling, reused from call to call.
type resampler struct {
	cx, cy coeffs
	tmp    []byte
	acc    []int32
	hs     hscratch
}

// hscratch is a horizontal kernel's own scratch memory.
type hscratch struct {
	t1, t2 []byte
	acc    []int32
	b      []int32
}

// pixels are packed pixels of ch bytes, rows stride bytes apart.
type pixels struct {
	pix    []byte
	w, h   int
	stride int
	ch     int
}

// resample writes the box [x0, x1) × [y0, y1) of src, resampled to ow × oh,
// into dst (rows dstStride bytes apart, src.ch bytes a pixel). The filter
// never reads outside src, as Pillow's never reads outside the image it is
// given: callers pass the crop, so edges behave as torchvision's crop-then-
// resize.
func (r *resampler) resample(dst []byte, dstStride int, src pixels, x0, y0, x1, y1 float64, ow, oh int) {
	ch := src.ch
	needH := ow != src.w || x0 != 0 || x1 != float64(ow)
	needV := oh != src.h || y0 != 0 || y1 != float64(oh)
	r.cy.compute(src.h, y0, y1, oh)
	yFirst := int(r.cy.bounds[0])
	yLast := int(r.cy.bounds[2*oh-2] + r.cy.bounds[2*oh-1])
	for i := range oh {
		r.cy.bounds[2*i] -= int32(yFirst)
	}
	in, inStride := src.pix[yFirst*src.stride:], src.stride
	rb := ow * ch
	if needH {
		r.cx.compute(src.w, x0, x1, ow)
		rows := yLast - yFirst
		r.tmp = grow(r.tmp, rows*rb)
		hpass(r.tmp, rb, in, inStride, rows, ow, ch, &r.cx, &r.hs)
		in, inStride = r.tmp, rb
	}
	if !needV {
		for y := range oh {
			copy(dst[y*dstStride:y*dstStride+rb], in[int(r.cy.bounds[2*y])*inStride:])
		}
		return
	}
	r.acc = grow(r.acc, rb)
	vpass(dst, dstStride, in, inStride, rb, oh, &r.cy, r.acc)
}

// goHPass is the horizontal pass: rows of src resampled to ow pixels each.
func goHPass(dst []byte, dstStride int, src []byte, srcStride, rows, ow, ch int, c *coeffs, _ *hscratch) {
	for y := range rows {
		line := src[y*srcStride:]
		out := dst[y*dstStride : y*dstStride+ow*ch]
		if ch == 3 {
			horizontal3(out, line, ow, c)
		} else {
			horizontalN(out, line, ow, ch, c)
		}
	}
}

// goVPass is the vertical pass: oh output rows of rb bytes.
func goVPass(dst []byte, dstStride int, in []byte, inStride, rb, oh int, c *coeffs, acc []int32) {
	ks := c.ksize
	acc = acc[:rb]
	for y := range oh {
		ymin, n := int(c.bounds[2*y]), int(c.bounds[2*y+1])
		for i := range acc {
			acc[i] = half
		}
		for t, w := range c.k[y*ks : y*ks+n] {
			line := in[(ymin+t)*inStride:]
			line = line[:len(acc)]
			for i, v := range line {
				acc[i] += int32(v) * w
			}
		}
		out := dst[y*dstStride : y*dstStride+rb]
		out = out[:len(acc)]
		for i, a := range acc {
			out[i] = clip8(a)
		}
	}
}

func horizontal3(out, line []byte, ow int, c *coeffs) {
	ks := c.ksize
	for x := range ow {
		xmin, n := int(c.bounds[2*x]), int(c.bounds[2*x+1])
		k := c.k[x*ks : x*ks+n]
		p := line[xmin*3 : (xmin+n)*3]
		s0, s1, s2 := int32(half), int32(half), int32(half)
		for t, w := range k {
			q := p[t*3 : t*3+3 : t*3+3]
			s0 += int32(q[0]) * w
			s1 += int32(q[1]) * w
			s2 += int32(q[2]) * w
		}
		o := out[x*3 : x*3+3 : x*3+3]
		o[0], o[1], o[2] = clip8(s0), clip8(s1), clip8(s2)
	}
}

func horizontalN(out, line []byte, ow, ch int, c *coeffs) {
	ks := c.ksize
	var s [4]int32
	for x := range ow {
		xmin, n := int(c.bounds[2*x]), int(c.bounds[2*x+1])
		k := c.k[x*ks : x*ks+n]
		for j := range ch {
			s[j] = half
		}
		for t, w := range k {
			q := line[(xmin+t)*ch:]
			for j := range ch {
				s[j] += int32(q[j]) * w
			}
		}
		for j := range ch {
			out[x*ch+j] = clip8(s[j])
		}
	}
}
