//go:build cgo && !nolibjpeg

package decode

// libjpeg-turbo through its libjpeg API (jpeglib.h), not the TurboJPEG API:
// Debian's libturbojpeg 2.1 can scale but not crop (tj3SetCroppingRegion came
// in 3.0), while the libjpeg API of the same library has jpeg_crop_scanline
// and jpeg_skip_scanlines. Decoding only the crop's rows and iMCU columns was
// 25-40 % faster than a full decode on ImageNet photos (decode/README in the
// closing note of issue 5 has the figures).

/*
#cgo CFLAGS: -O3
#cgo LDFLAGS: -ljpeg
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>
#include <jerror.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#error "loaderd needs libjpeg-turbo's jpeglib.h (jpeg_crop_scanline); build with -tags nolibjpeg to use Go's decoder"
#endif

typedef struct {
	struct jpeg_error_mgr pub;
	jmp_buf jb;
	int bad;
	char msg[JMSG_LENGTH_MAX];
} ld_err;

static void ld_error_exit(j_common_ptr c) {
	ld_err *e = (ld_err *)c->err;
	(*c->err->format_message)(c, e->msg);
	longjmp(e->jb, 1);
}

// Warnings mean damaged data, and libjpeg would go on to hand back gray or
// garbage pixels: they stop the decode at once (as TurboJPEG's
// TJFLAG_STOPONWARNING does), except those that leave the pixels intact.
static void ld_emit(j_common_ptr c, int level) {
	ld_err *e = (ld_err *)c->err;
	if (level >= 0) return;
	switch (c->err->msg_code) {
	case JWRN_EXTRANEOUS_DATA: case JWRN_ADOBE_XFORM: case JWRN_BOGUS_ICC:
	case JWRN_JFIF_MAJOR: case JWRN_NOT_SEQUENTIAL:
		return;
	}
	e->bad = 1;
	(*c->err->format_message)(c, e->msg);
	longjmp(e->jb, 1);
}

// A progressive JPEG can hold thousands of tiny scans, each a pass over the
// whole image: a few kilobytes that take minutes to decode. libjpeg-turbo's
// documented defence is a progress monitor that caps the scans.
#define LD_MAX_SCANS 64

typedef struct {
	struct jpeg_progress_mgr pub;
	ld_err *err;
} ld_progress;

static void ld_monitor(j_common_ptr c) {
	j_decompress_ptr d = (j_decompress_ptr)c;
	if (d->input_scan_number > LD_MAX_SCANS) {
		ld_err *e = (ld_err *)c->err;
		snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", LD_MAX_SCANS);
		e->bad = 1;
		longjmp(e->jb, 1);
	}
}

static int ld_classify(int code) {
	switch (code) {
	case JERR_BAD_PRECISION: case JERR_ARITH_NOTIMPL: case JERR_SOF_UNSUPPORTED:
	case JERR_CONVERSION_NOTIMPL: case JERR_NOTIMPL: case JERR_NOT_COMPILED:
		return 2;
	}
	return 1;
}

// ld_decode decodes rows [y0, y1) and at least columns [x0, x1) of the image
// scaled by 1/denom into out, ncomp bytes a pixel (3: RGB; 4: CMYK as
// stored). *rx is the first column decoded (x0 rounded down to an iMCU
// boundary) and *rw the number of columns. Returns 0, 1 (corrupt) or 2
// (unsupported), with libjpeg's message in msg.
static int ld_decode(const unsigned char *buf, unsigned long len, int denom, int ncomp,
		int x0, int x1, int y0, int y1, unsigned char *out, size_t cap,
		int *rx, int *rw, char *msg, int msglen) {
	struct jpeg_decompress_struct cinfo;
	ld_err jerr;
	cinfo.err = jpeg_std_error(&jerr.pub);
	jerr.pub.error_exit = ld_error_exit;
	jerr.pub.emit_message = ld_emit;
	jerr.bad = 0;
	jerr.msg[0] = 0;
	ld_progress prog;
	prog.pub.progress_monitor = ld_monitor;
	prog.err = &jerr;
	if (setjmp(jerr.jb)) {
		int code = jerr.pub.msg_code;
		jpeg_destroy_decompress(&cinfo);
		snprintf(msg, msglen, "%s", jerr.msg);
		return jerr.bad ? 1 : ld_classify(code);
	}
	jpeg_create_decompress(&cinfo);
	cinfo.progress = &prog.pub;
	jpeg_mem_src(&cinfo, buf, len);
	jpeg_read_header(&cinfo, TRUE);
	cinfo.out_color_space = ncomp == 4 ? JCS_CMYK : JCS_RGB;
	cinfo.scale_num = 1;
	cinfo.scale_denom = denom;
	jpeg_start_decompress(&cinfo);
	if (x1 > (int)cinfo.output_width) x1 = cinfo.output_width;
	if (y1 > (int)cinfo.output_height) y1 = cinfo.output_height;
	if (x0 < 0 || y0 < 0 || x0 >= x1 || y0 >= y1) {
		jpeg_destroy_decompress(&cinfo);
		snprintf(msg, msglen, "crop %d..%d x %d..%d is outside the %ux%u image", x0, x1, y0, y1,
			cinfo.output_width, cinfo.output_height);
		return 1;
	}
	JDIMENSION xo = x0, w = x1 - x0;
	if (x0 > 0 || (JDIMENSION)x1 < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xo, &w);
	size_t stride = (size_t)w * ncomp;
	if (stride * (size_t)(y1 - y0) > cap) {
		jpeg_destroy_decompress(&cinfo);
		snprintf(msg, msglen, "region of %u x %d pixels exceeds its buffer", w, y1 - y0);
		return 1;
	}
	if (y0 > 0) jpeg_skip_scanlines(&cinfo, y0);
	JSAMPROW rows[16];
	while ((int)cinfo.output_scanline < y1) {
		int n = y1 - (int)cinfo.output_scanline;
		if (n > 16) n = 16;
		for (int i = 0; i < n; i++) rows[i] = out + (size_t)(cinfo.output_scanline - y0 + i) * stride;
		if (jpeg_read_scanlines(&cinfo, rows, n) == 0) break;
	}
	int short_read = (int)cinfo.output_scanline < y1;
	*rx = xo;
	*rw = w;
	jpeg_destroy_decompress(&cinfo);
	if (short_read) {
		snprintf(msg, msglen, "decoder stopped early");
		return 1;
	}
	return 0;
}

// The resampling kernels, as resample.go's goHPass and goVPass (integer-exact
// copies: the two builds give the same pixels), where GCC vectorizes them.
#define LD_PB 22
#define LD_HALF (1 << (LD_PB - 1))

static inline uint8_t ld_clip8(int32_t v) {
	v >>= LD_PB;
	return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

// ld_hrow3 is the horizontal pass over one RGB row with a fixed number of
// taps, which the compiler unrolls for each kw it is inlined with.
static inline __attribute__((always_inline)) void ld_hrow3(uint8_t *out, const uint8_t *line, int ow,
		const int32_t *start, const int32_t *kp, const int kw) {
	for (int x = 0; x < ow; x++) {
		const uint8_t *p = line + (size_t)start[x] * 3;
		const int32_t *kk = kp + (size_t)x * kw;
		int32_t s0 = LD_HALF, s1 = LD_HALF, s2 = LD_HALF;
		for (int t = 0; t < kw; t++) {
			int32_t w = kk[t];
			s0 += p[3 * t] * w;
			s1 += p[3 * t + 1] * w;
			s2 += p[3 * t + 2] * w;
		}
		out[3 * x] = ld_clip8(s0);
		out[3 * x + 1] = ld_clip8(s1);
		out[3 * x + 2] = ld_clip8(s2);
	}
}

__attribute__((target_clones("avx2", "default")))
static void ld_hpass(uint8_t *dst, size_t dstStride, const uint8_t *src, size_t srcStride,
		int rows, int ow, int ch, const int32_t *bounds, const int32_t *k, int ks,
		const int32_t *start, const int32_t *kp, int kw) {
	if (ch == 3 && start != NULL && kw >= 1 && kw <= 8) {
		for (int y = 0; y < rows; y++) {
			uint8_t *o = dst + (size_t)y * dstStride;
			const uint8_t *l = src + (size_t)y * srcStride;
			switch (kw) {
			case 1: ld_hrow3(o, l, ow, start, kp, 1); break;
			case 2: ld_hrow3(o, l, ow, start, kp, 2); break;
			case 3: ld_hrow3(o, l, ow, start, kp, 3); break;
			case 4: ld_hrow3(o, l, ow, start, kp, 4); break;
			case 5: ld_hrow3(o, l, ow, start, kp, 5); break;
			case 6: ld_hrow3(o, l, ow, start, kp, 6); break;
			case 7: ld_hrow3(o, l, ow, start, kp, 7); break;
			case 8: ld_hrow3(o, l, ow, start, kp, 8); break;
			}
		}
		return;
	}
	for (int y = 0; y < rows; y++) {
		const uint8_t *line = src + (size_t)y * srcStride;
		uint8_t *out = dst + (size_t)y * dstStride;
		for (int x = 0; x < ow; x++) {
			int n = bounds[2 * x + 1];
			const int32_t *kk = k + (size_t)x * ks;
			const uint8_t *p = line + (size_t)bounds[2 * x] * ch;
			for (int c = 0; c < ch; c++) {
				int32_t s = LD_HALF;
				for (int t = 0; t < n; t++) s += p[ch * t + c] * kk[t];
				out[ch * x + c] = ld_clip8(s);
			}
		}
	}
}

// ld_transpose3 writes the transpose of h rows of w RGB pixels: dst row x,
// pixel y is src row y, pixel x. In tiles, so both sides stay in cache.
static void ld_transpose3(uint8_t *dst, size_t dstStride, const uint8_t *src, size_t srcStride, int w, int h) {
	enum { T = 16 };
	for (int y0 = 0; y0 < h; y0 += T) {
		int y1 = y0 + T < h ? y0 + T : h;
		for (int x0 = 0; x0 < w; x0 += T) {
			int x1 = x0 + T < w ? x0 + T : w;
			for (int y = y0; y < y1; y++) {
				const uint8_t *s = src + (size_t)y * srcStride;
				for (int x = x0; x < x1; x++) {
					uint8_t *d = dst + (size_t)x * dstStride + (size_t)y * 3;
					d[0] = s[3 * x];
					d[1] = s[3 * x + 1];
					d[2] = s[3 * x + 2];
				}
			}
		}
	}
}

__attribute__((target_clones("avx2", "default")))
static void ld_vpass(uint8_t *dst, size_t dstStride, const uint8_t *in, size_t inStride, int rb,
		int oh, const int32_t *bounds, const int32_t *k, int ks, int32_t *acc) {
	for (int y = 0; y < oh; y++) {
		int ymin = bounds[2 * y], n = bounds[2 * y + 1];
		const int32_t *kk = k + (size_t)y * ks;
		for (int i = 0; i < rb; i++) acc[i] = LD_HALF;
		for (int t = 0; t < n; t++) {
			const uint8_t *line = in + (size_t)(ymin + t) * inStride;
			int32_t w = kk[t];
			for (int i = 0; i < rb; i++) acc[i] += line[i] * w;
		}
		uint8_t *out = dst + (size_t)y * dstStride;
		for (int i = 0; i < rb; i++) out[i] = ld_clip8(acc[i]);
	}
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// The resampling kernels of this build: C's.
var (
	hpass = cHPass
	vpass = cVPass
)

func u8(b []byte) *C.uint8_t { return (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(b))) }

func i32(b []int32) *C.int32_t { return (*C.int32_t)(unsafe.Pointer(unsafe.SliceData(b))) }

func cHPass(dst []byte, dstStride int, src []byte, srcStride, rows, ow, ch int, c *coeffs, s *hscratch) {
	if rows == 0 || ow == 0 {
		return
	}
	_ = dst[(rows-1)*dstStride+ow*ch-1] // the C loops stay inside both buffers
	_ = src[(rows-1)*srcStride+int(c.bounds[2*ow-2]+c.bounds[2*ow-1])*ch-1]
	if ch == 3 && rows >= 16 && s != nil {
		// The horizontal pass as the vertical one (which GCC vectorizes) on
		// the transposed rows, and back: the same sums, so the same bytes.
		lo, hi := int(c.bounds[0]), int(c.bounds[2*ow-2]+c.bounds[2*ow-1])
		w, rb := hi-lo, rows*3
		s.t1 = grow(s.t1, w*rb)
		s.t2 = grow(s.t2, ow*rb)
		s.acc = grow(s.acc, rb)
		s.b = grow(s.b, 2*ow)
		for i := range ow {
			s.b[2*i], s.b[2*i+1] = c.bounds[2*i]-int32(lo), c.bounds[2*i+1]
		}
		C.ld_transpose3(u8(s.t1), C.size_t(rb), u8(src[lo*3:]), C.size_t(srcStride), C.int(w), C.int(rows))
		C.ld_vpass(u8(s.t2), C.size_t(rb), u8(s.t1), C.size_t(rb), C.int(rb), C.int(ow),
			i32(s.b), i32(c.k), C.int(c.ksize), i32(s.acc))
		C.ld_transpose3(u8(dst), C.size_t(dstStride), u8(s.t2), C.size_t(rb), C.int(rows), C.int(ow))
		return
	}
	var start, kp *C.int32_t
	if c.fixed {
		start, kp = i32(c.start), i32(c.kp)
	}
	C.ld_hpass(u8(dst), C.size_t(dstStride), u8(src), C.size_t(srcStride), C.int(rows), C.int(ow), C.int(ch),
		i32(c.bounds), i32(c.k), C.int(c.ksize), start, kp, C.int(c.kw))
}

func cVPass(dst []byte, dstStride int, in []byte, inStride, rb, oh int, c *coeffs, acc []int32) {
	if oh == 0 || rb == 0 {
		return
	}
	_ = dst[(oh-1)*dstStride+rb-1]
	_ = in[(int(c.bounds[2*oh-2]+c.bounds[2*oh-1])-1)*inStride+rb-1]
	_ = acc[rb-1]
	C.ld_vpass(u8(dst), C.size_t(dstStride), u8(in), C.size_t(inStride), C.int(rb), C.int(oh),
		i32(c.bounds), i32(c.k), C.int(c.ksize), i32(acc))
}

// jpegLibrary names the JPEG decoder of this build.
var jpegLibrary = fmt.Sprintf("libjpeg-turbo %d.%d.%d", C.LIBJPEG_TURBO_VERSION_NUMBER/1000000,
	C.LIBJPEG_TURBO_VERSION_NUMBER/1000%1000, C.LIBJPEG_TURBO_VERSION_NUMBER%1000)

// turboRegion decodes the box with libjpeg-turbo at the smallest DCT scale
// that still covers rw × rh, and only the crop's rows and iMCU columns.
func (w *work) turboRegion(h Header, data []byte, x0, x1, y0, y1 float64, rw, rh int) (pixels, [4]float64, bool, error) {
	d := dctScale(x1-x0, y1-y0, rw, rh)
	fd := float64(d)
	x0, x1, y0, y1 = x0/fd, x1/fd, y0/fd, y1/fd
	sw := (h.Width + d - 1) / d // libjpeg's scaled size
	ix0, iy0 := int(math.Floor(x0)), int(math.Floor(y0))
	ix1, iy1 := min(int(math.Ceil(x1)), sw), int(math.Ceil(y1))
	ncomp := 3
	if h.Components == 4 {
		ncomp = 4
	}
	need := sw * ncomp * (iy1 - iy0)
	w.decoded = grow(w.decoded, need)
	var rx, rwid C.int
	var msg [C.JMSG_LENGTH_MAX]C.char
	rc := C.ld_decode((*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))), C.ulong(len(data)), C.int(d), C.int(ncomp),
		C.int(ix0), C.int(ix1), C.int(iy0), C.int(iy1),
		(*C.uchar)(unsafe.Pointer(unsafe.SliceData(w.decoded))), C.size_t(len(w.decoded)),
		&rx, &rwid, &msg[0], C.int(len(msg)))
	if rc != 0 {
		kind := ErrCorrupt
		if rc == 2 {
			kind = ErrUnsupported
		}
		return pixels{}, [4]float64{}, true, &Error{Kind: kind, Err: errors.New("jpeg: " + C.GoString(&msg[0]))}
	}
	stride := int(rwid) * ncomp
	off := (ix0 - int(rx)) * ncomp
	pw, ph := ix1-ix0, iy1-iy0
	px := pixels{pix: w.decoded[off:], w: pw, h: ph, stride: stride, ch: 3}
	if ncomp == 4 {
		w.conv = grow(w.conv, pw*ph*3)
		cmykRegion(w.conv, w.decoded[off:], stride, pw, ph, h.Adobe)
		px = pixels{pix: w.conv, w: pw, h: ph, stride: pw * 3, ch: 3}
	}
	return px, [4]float64{x0 - float64(ix0), y0 - float64(iy0), x1 - float64(ix0), y1 - float64(iy0)}, true, nil
}

// cmykRegion converts libjpeg's CMYK output to RGB. Adobe files store ink
// inverted (255: none), as Photoshop writes them; Pillow reads them as
// "CMYK;I" and so do we.
func cmykRegion(dst, src []byte, stride, w, h int, adobe bool) {
	i := 0
	for y := range h {
		row := src[y*stride : y*stride+w*4]
		for j := 0; j < len(row); j += 4 {
			c, m, ye, k := row[j], row[j+1], row[j+2], row[j+3]
			if adobe {
				c, m, ye, k = 255-c, 255-m, 255-ye, 255-k
			}
			dst[i], dst[i+1], dst[i+2] = cmykToRGB(c, m, ye, k)
			i += 3
		}
	}
}
