package decode

import (
	"context"
	"errors"
	"fmt"
)

// Sample is one encoded image to decode.
type Sample struct {
	Data []byte
	// Seed seeds the sample's random transforms: Pipeline.SampleSeed.
	Seed uint64
}

// Decoder decodes batches of images and transforms them. Implementations are
// safe for concurrent use.
type Decoder interface {
	// Name says which implementation runs, for logs and status.
	Name() string
	// Decode decodes every sample, applies p, and writes sample i's output
	// (p.OutBytes() bytes: uint8 HWC, or float32 CHW in native byte order)
	// at dst[i*p.OutBytes():]. errs has one entry per sample: nil, or why
	// that sample failed (an *Error); a failed sample's slot is left
	// undefined. A cancelled ctx fails the samples not yet decoded.
	Decode(ctx context.Context, p *Pipeline, samples []Sample, dst []byte, errs []error)
	// Batch is how many samples one Decode call should get: 1 for a
	// decoder that the caller runs on many workers at once (the CPU), 0 for
	// a whole batch in one call (a GPU batches internally).
	Batch() int
	// Close releases what the decoder holds.
	Close() error
}

// Error classes of a failed sample.
var (
	// ErrCorrupt: the data is not a valid image.
	ErrCorrupt = errors.New("corrupt image")
	// ErrUnsupported: a valid image this decoder cannot read (12-bit or
	// lossless JPEG, an unknown format).
	ErrUnsupported = errors.New("unsupported image")
	// ErrTooLarge: more pixels than the decoder's limit (a decompression
	// bomb, or an image too large to decode safely).
	ErrTooLarge = errors.New("image too large")
)

// Error is why one sample failed.
type Error struct {
	Kind error // ErrCorrupt, ErrUnsupported or ErrTooLarge
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("%v: %v", e.Kind, e.Err) }

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// Options configure a decoder.
type Options struct {
	// MaxPixels refuses images with more pixels (width × height, as the
	// header says) before any pixel memory is allocated; 0 means
	// DefaultMaxPixels.
	MaxPixels int64
	// Discovery is what GPU discovery found, for New; nil: New runs
	// DiscoverGPUs itself. The daemon discovers once and shows the result
	// in its status.
	Discovery *Discovery
}

// DefaultMaxPixels is the default pixel limit: a 64-megapixel image needs up
// to 512 MiB while decoding (16-bit RGBA PNG); Pillow's own limit is 89.
const DefaultMaxPixels = 64 << 20

func (o *Options) ensureDefaults() {
	if o.MaxPixels <= 0 {
		o.MaxPixels = DefaultMaxPixels
	}
}

// ErrNoGPU is returned by New for "gpu" when this build or machine has no
// usable GPU decoder; the error says which.
var ErrNoGPU = errors.New("GPU decoding is not available")
