//go:build nvjpeg && cgo

package decode

// The GPU decoder: nvJPEG's batched decode (on the hardware JPEG decoder of
// A100/H100-class GPUs where there is one, else nvJPEG's CUDA decoder), then
// crop + resize + mirror with NPP, into pinned host memory. The host half
// (batched.go) does everything else as the CPU path does.
//
// UNVERIFIED: this file was written without a GPU or the CUDA toolkit. `make
// check-nvjpeg` compiles it against decode/testdata/cuda-stub, declarations
// of the few CUDA, nvJPEG and NPP symbols used, copied from their
// documentation: that proves the Go and C here agree with those
// declarations, not that they agree with the real headers or run. Build it
// for real with `make build NVJPEG=1` (CUDA_HOME, default /usr/local/cuda).

/*
#cgo LDFLAGS: -lnvjpeg -lnppig -lnppc -lcudart
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime_api.h>
#include <nvjpeg.h>
#include <nppcore.h>
#include <nppi_geometry_transforms.h>

// ld_lane is one lane: a CUDA stream on one device, an nvJPEG handle and
// decoder state, and buffers that grow to the largest call and are kept.
typedef struct {
	int dev;
	int hardware;              // the handle uses NVJPEG_BACKEND_HARDWARE
	cudaStream_t stream;
	nvjpegHandle_t handle;
	nvjpegJpegState_t state;
	nvjpegJpegStream_t parsed; // for nvjpegDecodeBatchedSupported
	NppStreamContext npp;
	unsigned char *in;  size_t in_cap;   // pinned: the encoded images, one after another
	unsigned char *dec; size_t dec_cap;  // device: the decoded images
	unsigned char *rsz; size_t rsz_cap;  // device: the resized crops
	unsigned char *out; size_t out_cap;  // pinned: the resized crops, for the host
	int cap;                             // the length of the arrays below
	const unsigned char **ptrs; size_t *lens; nvjpegImage_t *imgs;
} ld_lane;

#define LD_CUDA(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
	snprintf(msg, msglen, "%s: %s", #call, cudaGetErrorString(e_)); return 1; } } while (0)
#define LD_NVJPEG(call) do { nvjpegStatus_t s_ = (call); if (s_ != NVJPEG_STATUS_SUCCESS) { \
	snprintf(msg, msglen, "%s: nvJPEG status %d", #call, (int)s_); return 1; } } while (0)
#define LD_NPP(call) do { NppStatus s_ = (call); if (s_ != NPP_SUCCESS) { \
	snprintf(msg, msglen, "%s: NPP status %d", #call, (int)s_); return 1; } } while (0)

// ld_lane_open opens a lane on device dev: the hardware backend when the GPU
// has a JPEG engine, else the default (CUDA) backend.
static int ld_lane_open(ld_lane *l, int dev, char *msg, int msglen) {
	memset(l, 0, sizeof *l);
	l->dev = dev;
	LD_CUDA(cudaSetDevice(dev));
	LD_CUDA(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking));
	l->hardware = 1;
	if (nvjpegCreateEx(NVJPEG_BACKEND_HARDWARE, NULL, NULL, 0, &l->handle) != NVJPEG_STATUS_SUCCESS) {
		l->hardware = 0;
		LD_NVJPEG(nvjpegCreateEx(NVJPEG_BACKEND_DEFAULT, NULL, NULL, 0, &l->handle));
	}
	LD_NVJPEG(nvjpegJpegStateCreate(l->handle, &l->state));
	LD_NVJPEG(nvjpegJpegStreamCreate(l->handle, &l->parsed));
	LD_NPP(nppGetStreamContext(&l->npp));
	l->npp.hStream = l->stream;
	l->npp.nCudaDeviceId = dev;
	return 0;
}

static void ld_lane_close(ld_lane *l) {
	cudaSetDevice(l->dev);
	if (l->stream) cudaStreamSynchronize(l->stream);
	if (l->parsed) nvjpegJpegStreamDestroy(l->parsed);
	if (l->state) nvjpegJpegStateDestroy(l->state);
	if (l->handle) nvjpegDestroy(l->handle);
	if (l->stream) cudaStreamDestroy(l->stream);
	if (l->in) cudaFreeHost(l->in);
	if (l->out) cudaFreeHost(l->out);
	if (l->dec) cudaFree(l->dec);
	if (l->rsz) cudaFree(l->rsz);
	free(l->ptrs); free(l->lens); free(l->imgs);
	memset(l, 0, sizeof *l);
}

// ld_reserve makes sure the lane's buffers hold in encoded bytes, dec and
// rsz bytes of pixels and n images.
static int ld_reserve(ld_lane *l, size_t in, size_t dec, size_t rsz, int n, char *msg, int msglen) {
	LD_CUDA(cudaSetDevice(l->dev));
	if (in > l->in_cap) {
		if (l->in) cudaFreeHost(l->in);
		l->in = NULL; l->in_cap = 0;
		LD_CUDA(cudaHostAlloc((void **)&l->in, in, cudaHostAllocDefault));
		l->in_cap = in;
	}
	if (dec > l->dec_cap) {
		if (l->dec) cudaFree(l->dec);
		l->dec = NULL; l->dec_cap = 0;
		LD_CUDA(cudaMalloc((void **)&l->dec, dec));
		l->dec_cap = dec;
	}
	if (rsz > l->rsz_cap) {
		if (l->rsz) cudaFree(l->rsz);
		if (l->out) cudaFreeHost(l->out);
		l->rsz = NULL; l->out = NULL; l->rsz_cap = l->out_cap = 0;
		LD_CUDA(cudaMalloc((void **)&l->rsz, rsz));
		LD_CUDA(cudaHostAlloc((void **)&l->out, rsz, cudaHostAllocDefault));
		l->rsz_cap = l->out_cap = rsz;
	}
	if (n > l->cap) {
		free(l->ptrs); free(l->lens); free(l->imgs);
		l->ptrs = malloc(n * sizeof *l->ptrs);
		l->lens = malloc(n * sizeof *l->lens);
		l->imgs = calloc(n, sizeof *l->imgs);
		l->cap = (l->ptrs && l->lens && l->imgs) ? n : 0;
		if (!l->cap) { snprintf(msg, msglen, "out of host memory for %d images", n); return 1; }
	}
	return 0;
}

// ld_supported says whether the hardware decoder takes image k (0: yes),
// as nvjpegDecodeBatchedSupported reports it (0 there means supported).
static int ld_supported(ld_lane *l, const unsigned char *data, size_t len) {
	if (!l->hardware) return 1;
	int unsupported = 1;
	if (nvjpegJpegStreamParse(l->handle, data, len, 0, 0, l->parsed) != NVJPEG_STATUS_SUCCESS) return 0;
	if (nvjpegDecodeBatchedSupported(l->handle, l->parsed, &unsupported) != NVJPEG_STATUS_SUCCESS) return 0;
	return unsupported == 0;
}

// ld_lane_decode decodes the n images already in l->in (at in_off, in_len
// bytes each, w × h pixels), crops roi[4k..4k+3] (x, y, width, height) of
// image k, resizes it to osz[2k] × osz[2k+1], mirrors it when mirror[k], and
// copies the results, packed one after another, into l->out. Returns 0, or 1
// with msg.
static int ld_lane_decode(ld_lane *l, int n, const size_t *in_off, const size_t *in_len,
		const int *w, const int *h, const int *roi, const int *osz, const unsigned char *mirror,
		char *msg, int msglen) {
	LD_CUDA(cudaSetDevice(l->dev));
	size_t dec = 0, rsz = 0;
	for (int k = 0; k < n; k++) {
		l->ptrs[k] = l->in + in_off[k];
		l->lens[k] = in_len[k];
		if (!ld_supported(l, l->ptrs[k], l->lens[k])) {
			snprintf(msg, msglen, "image %d: the hardware JPEG decoder does not take it", k);
			return 1;
		}
		memset(&l->imgs[k], 0, sizeof l->imgs[k]);
		// NVJPEG_OUTPUT_RGBI: interleaved RGB in channel[0].
		l->imgs[k].channel[0] = l->dec + dec;
		l->imgs[k].pitch[0] = (size_t)w[k] * 3;
		dec += (size_t)w[k] * h[k] * 3;
	}
	LD_NVJPEG(nvjpegDecodeBatchedInitialize(l->handle, l->state, n, 1, NVJPEG_OUTPUT_RGBI));
	LD_NVJPEG(nvjpegDecodeBatched(l->handle, l->state, l->ptrs, l->lens, l->imgs, l->stream));
	for (int k = 0; k < n; k++) {
		NppiSize src = {w[k], h[k]};
		NppiRect sroi = {roi[4 * k], roi[4 * k + 1], roi[4 * k + 2], roi[4 * k + 3]};
		NppiSize dst = {osz[2 * k], osz[2 * k + 1]};
		NppiRect droi = {0, 0, dst.width, dst.height};
		// Supersampling (an area filter) when shrinking both ways, as
		// antialiased resizing does; bilinear otherwise.
		int interp = (dst.width <= sroi.width && dst.height <= sroi.height) ? NPPI_INTER_SUPER : NPPI_INTER_LINEAR;
		Npp8u *out = l->rsz + rsz;
		LD_NPP(nppiResize_8u_C3R_Ctx(l->imgs[k].channel[0], w[k] * 3, src, sroi,
			out, dst.width * 3, dst, droi, interp, l->npp));
		if (mirror[k]) LD_NPP(nppiMirror_8u_C3IR_Ctx(out, dst.width * 3, dst, NPP_VERTICAL_AXIS, l->npp));
		rsz += (size_t)dst.width * dst.height * 3;
	}
	LD_CUDA(cudaMemcpyAsync(l->out, l->rsz, rsz, cudaMemcpyDeviceToHost, l->stream));
	LD_CUDA(cudaStreamSynchronize(l->stream));
	return 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// newGPU is the nvJPEG decoder of this build.
var newGPU gpuBuilder = newNVJPEG

// Per GPU: lanesPerGPU lanes, so that one batch's copies and host work
// overlap another's decode; each lane holds at most gpuArena bytes of
// decoded pixels on the device (and the pinned buffers of a batch's
// encoded bytes and outputs).
const (
	lanesPerGPU = 2
	gpuArena    = 512 << 20
)

func newNVJPEG(opts Options, disc Discovery) (Decoder, error) {
	var lanes []lane
	hw := 0
	for _, g := range disc.GPUs {
		for range lanesPerGPU {
			l, err := openLane(g.Index)
			if err != nil {
				for _, o := range lanes {
					_ = o.close()
				}
				return nil, fmt.Errorf("GPU %d (%s): %w", g.Index, g.Name, err)
			}
			if l.c.hardware != 0 {
				hw++
			}
			lanes = append(lanes, l)
		}
	}
	backend := "CUDA"
	if hw == len(lanes) {
		backend = "hardware JPEG engine"
	}
	name := fmt.Sprintf("gpu (nvJPEG on the %s + NPP, %d GPU(s): %s)", backend, len(disc.GPUs), disc.GPUs[0].Name)
	return newBatched(opts, name, lanes, gpuArena, nvjpegTakes), nil
}

// nvjpegTakes: baseline JPEGs, gray or YCbCr. Progressive JPEGs (which the
// hardware decoder refuses) and CMYK ones (which nvJPEG does not convert as
// Pillow does) decode on the CPU, as do PNG and the other formats.
func nvjpegTakes(h Header) bool { return h.Format == JPEG && !h.Progressive && h.Components != 4 }

// cLane is a lane on one GPU. Its C struct lives in C memory: it holds
// pointers to CUDA memory, and Go must not move it.
type cLane struct {
	c *C.ld_lane
}

func openLane(dev int) (*cLane, error) {
	c := (*C.ld_lane)(C.calloc(1, C.size_t(unsafe.Sizeof(C.ld_lane{}))))
	if c == nil {
		return nil, errors.New("out of host memory")
	}
	var msg [256]C.char
	if C.ld_lane_open(c, C.int(dev), &msg[0], C.int(len(msg))) != 0 {
		C.ld_lane_close(c)
		C.free(unsafe.Pointer(c))
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return &cLane{c: c}, nil
}

func (l *cLane) close() error {
	C.ld_lane_close(l.c)
	C.free(unsafe.Pointer(l.c))
	l.c = nil
	return nil
}

// decode implements lane. The encoded bytes are copied into the lane's
// pinned input first: nvJPEG copies them to the device from there at full
// PCIe speed, and no Go pointer crosses into C beyond the call.
func (l *cLane) decode(data [][]byte, jobs []job) ([]byte, error) {
	n := len(jobs)
	off := make([]C.size_t, n)
	lens := make([]C.size_t, n)
	w := make([]C.int, n)
	h := make([]C.int, n)
	roi := make([]C.int, 4*n)
	osz := make([]C.int, 2*n)
	mir := make([]C.uchar, n)
	var in, dec, out int
	for k, j := range jobs {
		off[k], lens[k] = C.size_t(in), C.size_t(len(data[k]))
		in += len(data[k])
		dec += j.h.Width * j.h.Height * 3
		out += j.outBytes
		w[k], h[k] = C.int(j.h.Width), C.int(j.h.Height)
		roi[4*k], roi[4*k+1], roi[4*k+2], roi[4*k+3] = C.int(j.x), C.int(j.y), C.int(j.w), C.int(j.ht)
		osz[2*k], osz[2*k+1] = C.int(j.rw), C.int(j.rh)
		if j.mirror {
			mir[k] = 1
		}
	}
	var msg [256]C.char
	if C.ld_reserve(l.c, C.size_t(in), C.size_t(dec), C.size_t(out), C.int(n), &msg[0], C.int(len(msg))) != 0 {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	pinned := unsafe.Slice((*byte)(unsafe.Pointer(l.c.in)), in)
	for k := range jobs {
		copy(pinned[off[k]:], data[k])
	}
	if C.ld_lane_decode(l.c, C.int(n), &off[0], &lens[0], &w[0], &h[0], &roi[0], &osz[0], &mir[0],
		&msg[0], C.int(len(msg))) != 0 {
		return nil, errors.New("nvjpeg: " + C.GoString(&msg[0]))
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(l.c.out)), out), nil
}
