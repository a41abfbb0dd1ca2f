package decode

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// lane is one stream of work on a device (a GPU): its own queue, decoder
// state and buffers. A lane runs one call at a time.
type lane interface {
	// decode decodes each job's JPEG (data[k] for jobs[k]) whole, crops the
	// job's ROI, resizes it to rw × rh and mirrors it when job.mirror, and
	// returns the results packed RGB one after another, in memory the lane
	// owns and reuses on its next call. An error fails the whole call:
	// nvJPEG's batched decode reports one status for the batch.
	decode(data [][]byte, jobs []job) ([]byte, error)
	close() error
}

// job is one sample of a device batch, planned on the host.
type job struct {
	i        int // the sample's index in the Decode call
	h        Header
	g        Geometry
	x, y     int // the ROI in the stored image: integers, as NPP takes them
	w, ht    int
	rw, rh   int  // the resized content, in stored orientation
	mirror   bool // the device mirrors (orientation 1); else the host turns and flips
	outBytes int  // rw * rh * 3
}

// batched is a Decoder that hands whole batches of JPEGs to a device, a
// lane at a time, and does on the host what is cheap there and identical to
// the CPU path: header checks (so bad images fail with the CPU's errors),
// the random geometry, EXIF orientation, padding and normalization. Images
// the device does not take (other formats, progressive or CMYK JPEGs) and
// every sample of a device call that failed go to the CPU decoder, which
// decodes them or reports the same error it always would.
type batched struct {
	opts  Options
	name  string
	cpu   *CPU
	takes func(Header) bool
	lanes chan lane
	all   []lane
	// arena bounds the decoded pixels (width × height × 3) of one lane
	// call: the device memory a lane holds for them.
	arena int64
	done  chan struct{}
	once  sync.Once
	// Samples that went to the CPU because the device failed their batch.
	retried atomic.Int64
}

func newBatched(opts Options, name string, lanes []lane, arena int64, takes func(Header) bool) *batched {
	opts.ensureDefaults()
	b := &batched{opts: opts, name: name, cpu: NewCPU(opts), takes: takes, lanes: make(chan lane, len(lanes)),
		all: lanes, arena: arena, done: make(chan struct{})}
	for _, l := range lanes {
		b.lanes <- l
	}
	return b
}

// Name implements Decoder.
func (b *batched) Name() string { return b.name }

// Batch implements Decoder: the whole batch in one call.
func (b *batched) Batch() int { return 0 }

// errClosed fails the samples of a Decode call after Close.
var errClosed = errors.New("decode: the GPU decoder is closed")

// Close implements Decoder: it waits for the calls in flight to give their
// lanes back, then releases every lane.
func (b *batched) Close() error {
	var errs []error
	b.once.Do(func() {
		close(b.done)
		for range b.all {
			errs = append(errs, (<-b.lanes).close())
		}
	})
	return errors.Join(errs...)
}

// Decode implements Decoder.
func (b *batched) Decode(ctx context.Context, p *Pipeline, samples []Sample, dst []byte, errs []error) {
	n := p.OutBytes()
	var jobs []job
	var onCPU []int
	for i, s := range samples {
		if err := ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		j, ok, err := b.plan(p, i, s)
		switch {
		case err != nil:
			errs[i] = err
		case !ok:
			onCPU = append(onCPU, i)
		default:
			jobs = append(jobs, j)
		}
	}
	// The CPU's share runs beside the device's, one sample a core.
	var cpu errgroup.Group
	cpu.SetLimit(runtime.GOMAXPROCS(0))
	toCPU := func(i int) {
		cpu.Go(func() error {
			b.cpu.Decode(ctx, p, samples[i:i+1], dst[i*n:(i+1)*n], errs[i:i+1])
			return nil
		})
	}
	for _, i := range onCPU {
		toCPU(i)
	}
	var wg sync.WaitGroup
	for _, chunk := range b.chunks(jobs) {
		wg.Go(func() {
			if err := b.device(ctx, p, samples, chunk, dst, errs); err != nil {
				if ctx.Err() != nil || errors.Is(err, errClosed) {
					for _, j := range chunk {
						errs[j.i] = err
					}
					return
				}
				b.retried.Add(int64(len(chunk)))
				for _, j := range chunk {
					toCPU(j.i)
				}
			}
		})
	}
	wg.Wait()
	_ = cpu.Wait() // the goroutines return nil: errors are per sample
}

// plan checks sample i as the CPU does and plans its device job; ok is false
// for a sample the device does not take.
func (b *batched) plan(p *Pipeline, i int, s Sample) (job, bool, error) {
	h, g, err := prepare(p, s, b.opts.MaxPixels)
	if err != nil {
		return job{}, false, err
	}
	cw, ch := g.X1-g.X0, g.Y1-g.Y0
	if !b.takes(h) || cw <= 0 || ch <= 0 {
		return job{}, false, nil
	}
	bx0, bx1, by0, by1, rw, rh := storedBox(h, g, cw, ch)
	x0, x1 := roundBox(bx0, bx1, h.Width)
	y0, y1 := roundBox(by0, by1, h.Height)
	return job{i: i, h: h, g: g, x: x0, y: y0, w: x1 - x0, ht: y1 - y0, rw: rw, rh: rh,
		mirror: h.Orientation == 1 && g.Flip, outBytes: rw * rh * 3}, true, nil
}

// roundBox rounds a source interval to whole pixels, at least one, inside
// [0, n): NPP's ROIs are integers (torchvision's crops are too).
func roundBox(a, b float64, n int) (int, int) {
	lo, hi := int(math.Round(a)), int(math.Round(b))
	lo = min(max(lo, 0), n-1)
	hi = min(max(hi, lo+1), n)
	return lo, hi
}

// chunks splits jobs into lane calls whose decoded pixels fit the arena (a
// call takes at least one job: MaxPixels bounds its size).
func (b *batched) chunks(jobs []job) [][]job {
	var out [][]job
	var size int64
	start := 0
	for k, j := range jobs {
		px := int64(j.h.Width) * int64(j.h.Height) * 3
		if k > start && size+px > b.arena {
			out = append(out, jobs[start:k])
			start, size = k, 0
		}
		size += px
	}
	if start < len(jobs) {
		out = append(out, jobs[start:])
	}
	return out
}

// device runs chunk on a lane and finishes its samples on the host.
func (b *batched) device(ctx context.Context, p *Pipeline, samples []Sample, chunk []job, dst []byte, errs []error) error {
	var l lane
	select {
	case l = <-b.lanes:
	case <-b.done:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { b.lanes <- l }()
	data := make([][]byte, len(chunk))
	for k, j := range chunk {
		data[k] = samples[j.i].Data
	}
	out, err := l.decode(data, chunk)
	if err != nil {
		return err
	}
	n := p.OutBytes()
	var scratch []byte
	off := 0
	for _, j := range chunk {
		finish(p, j, out[off:off+j.outBytes], dst[j.i*n:(j.i+1)*n], &scratch)
		errs[j.i] = nil
		off += j.outBytes
	}
	return nil
}

// finish places a job's resized content into its output as the CPU does:
// the padding, the orientation and flip the device did not do, and the
// normalization.
func finish(p *Pipeline, j job, content, out []byte, scratch *[]byte) {
	outH, outW := p.Size()
	stride := outW * 3
	target := out
	if p.float {
		*scratch = grow(*scratch, outH*stride)
		target = *scratch
	}
	g := j.g
	if g.X0 != 0 || g.Y0 != 0 || g.X1 != outW || g.Y1 != outH {
		clear(target)
	}
	cw, ch := g.X1-g.X0, g.Y1-g.Y0
	at := target[g.Y0*stride+g.X0*3:]
	if o := j.h.Orientation; o == 1 {
		for y := range ch {
			copy(at[y*stride:y*stride+cw*3], content[y*cw*3:(y+1)*cw*3])
		}
	} else {
		orient(at, stride, cw, ch, content, j.rw, j.rh, o, g.Flip)
	}
	if p.float {
		normalize(out, target, outH*outW, p.scale, p.bias)
	}
}
