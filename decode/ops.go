package decode

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// OpKind names a transform.
type OpKind int

// The transforms, with torchvision's semantics.
const (
	// RandomResizedCrop crops a random area fraction in Scale with a random
	// aspect ratio in Ratio, then resizes it to (Height, Width).
	RandomResizedCrop OpKind = iota + 1
	// Resize resizes to (Height, Width), or, when Width is 0, so that the
	// shorter edge is Height and the aspect ratio is kept.
	Resize
	// CenterCrop crops (Height, Width) from the centre, padding with zeros
	// where the image is smaller.
	CenterCrop
	// RandomHorizontalFlip mirrors the image with probability P.
	RandomHorizontalFlip
	// Normalize turns the uint8 HWC image into float32 CHW, (x/255-Mean)/Std;
	// it must be the last op.
	Normalize
)

func (k OpKind) String() string {
	switch k {
	case RandomResizedCrop:
		return "random_resized_crop"
	case Resize:
		return "resize"
	case CenterCrop:
		return "center_crop"
	case RandomHorizontalFlip:
		return "random_horizontal_flip"
	case Normalize:
		return "normalize"
	}
	return fmt.Sprintf("op(%d)", int(k))
}

// Op is one transform. Zero Scale and Ratio take torchvision's defaults,
// (0.08, 1) and (3/4, 4/3).
type Op struct {
	Kind          OpKind
	Height, Width int
	Scale, Ratio  [2]float64
	P             float64
	Mean, Std     []float64
}

// Spec says which column holds encoded images and what to do with them. It is
// part of a dataset spec.
type Spec struct {
	Column string
	Ops    []Op
	// Seed seeds every random transform together with the epoch and the
	// sample's row index in the dataset; 0 is a seed like any other.
	Seed uint64
}

// Fingerprint identifies what the spec does to images: equal for specs that
// give the same pixels.
func (s Spec) Fingerprint() string {
	b, _ := json.Marshal(s) // cannot fail: strings, numbers and slices
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Limits on a spec, so one request cannot ask for unbounded work.
const (
	MaxSide = 16384 // output height or width
	MaxOps  = 64
)

// ErrInvalid marks a spec that cannot work (callers add their error class).
var ErrInvalid = errors.New("invalid image transform")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

var (
	defaultScale = [2]float64{0.08, 1}
	defaultRatio = [2]float64{3.0 / 4, 4.0 / 3}
)

// Validate checks a spec; Compile calls it.
func (s Spec) Validate() error {
	_, err := Compile(s)
	return err
}

// Pipeline is a compiled, validated Spec. It is immutable and safe for
// concurrent use.
type Pipeline struct {
	spec        Spec
	ops         []Op // with defaults filled in
	outH, outW  int
	float       bool
	scale, bias [3]float32 // normalize: out = v*scale + bias
}

// Compile validates a spec and prepares it for decoding.
func Compile(s Spec) (*Pipeline, error) {
	if s.Column == "" {
		return nil, invalidf("decode_image needs a column")
	}
	if len(s.Ops) > MaxOps {
		return nil, invalidf("%d transforms, at most %d", len(s.Ops), MaxOps)
	}
	p := &Pipeline{spec: s}
	fixed := false // whether the output size is known whatever the input
	for i, op := range s.Ops {
		where := fmt.Sprintf("transform %d (%s)", i, op.Kind)
		if p.float {
			return nil, invalidf("%s: normalize must be the last transform", where)
		}
		switch op.Kind {
		case RandomResizedCrop, CenterCrop:
			if err := checkSize(where, op.Height, op.Width, false); err != nil {
				return nil, err
			}
			fixed = true
			p.outH, p.outW = op.Height, op.Width
			if op.Kind == RandomResizedCrop {
				if op.Scale == [2]float64{} {
					op.Scale = defaultScale
				}
				if op.Ratio == [2]float64{} {
					op.Ratio = defaultRatio
				}
				if !(op.Scale[0] >= 0 && op.Scale[0] <= op.Scale[1] && op.Scale[1] > 0) || math.IsInf(op.Scale[1], 0) {
					return nil, invalidf("%s: scale %v must satisfy 0 <= min <= max, max > 0", where, op.Scale)
				}
				if !(op.Ratio[0] > 0 && op.Ratio[0] <= op.Ratio[1]) || math.IsInf(op.Ratio[1], 0) {
					return nil, invalidf("%s: ratio %v must satisfy 0 < min <= max", where, op.Ratio)
				}
			}
		case Resize:
			if err := checkSize(where, op.Height, op.Width, true); err != nil {
				return nil, err
			}
			fixed = op.Width > 0
			p.outH, p.outW = op.Height, op.Width
		case RandomHorizontalFlip:
			if !(op.P >= 0 && op.P <= 1) {
				return nil, invalidf("%s: probability %v is outside [0, 1]", where, op.P)
			}
		case Normalize:
			if err := p.setNormalize(where, op); err != nil {
				return nil, err
			}
		default:
			return nil, invalidf("%s: unknown transform", where)
		}
		p.ops = append(p.ops, op)
	}
	if !fixed {
		return nil, invalidf("images would come out in different sizes: end the resizing transforms " +
			"with random_resized_crop, center_crop or resize((height, width))")
	}
	return p, nil
}

func checkSize(where string, h, w int, wOptional bool) error {
	if h < 1 || h > MaxSide || w > MaxSide || w < 0 || (w == 0 && !wOptional) {
		return invalidf("%s: size %dx%d must be 1..%d on each side", where, h, w, MaxSide)
	}
	return nil
}

func (p *Pipeline) setNormalize(where string, op Op) error {
	if n := len(op.Mean); n != 1 && n != 3 || len(op.Std) != n {
		return invalidf("%s: mean and std need 1 or 3 values each, got %d and %d", where, len(op.Mean), len(op.Std))
	}
	for c := range 3 {
		m, s := op.Mean[c%len(op.Mean)], op.Std[c%len(op.Std)]
		if s == 0 || math.IsNaN(s) || math.IsInf(s, 0) || math.IsNaN(m) || math.IsInf(m, 0) {
			return invalidf("%s: std must be finite and non-zero and mean finite, got mean %v std %v", where, m, s)
		}
		p.scale[c] = float32(1 / (255 * s))
		p.bias[c] = float32(-m / s)
	}
	p.float = true
	return nil
}

// Spec returns the spec the pipeline was compiled from.
func (p *Pipeline) Spec() Spec { return p.spec }

// Float reports whether the output is float32 CHW (normalized) rather than
// uint8 HWC.
func (p *Pipeline) Float() bool { return p.float }

// Size is the output's height and width.
func (p *Pipeline) Size() (h, w int) { return p.outH, p.outW }

// Shape is the output tensor's shape: (H, W, 3), or (3, H, W) when normalized.
func (p *Pipeline) Shape() []int64 {
	if p.float {
		return []int64{3, int64(p.outH), int64(p.outW)}
	}
	return []int64{int64(p.outH), int64(p.outW), 3}
}

// OutBytes is the size of one sample's output.
func (p *Pipeline) OutBytes() int {
	n := p.outH * p.outW * 3
	if p.float {
		n *= 4
	}
	return n
}

// SampleSeed is the seed of one sample's random transforms: a pure function
// of the spec's seed, the epoch and the sample's stable identity (its row in
// the dataset), so the same sample gets the same crop whatever the world size.
func (p *Pipeline) SampleSeed(epoch, id int64) uint64 {
	return mix(mix(mix(p.spec.Seed^0x6c6f61646572640a)^uint64(epoch)) ^ uint64(id))
}

// Geometry is where one sample's output comes from: output pixels
// [X0, X1) × [Y0, Y1) (the content; the rest is zero, center_crop's padding)
// resample the box [SX0, SX1) × [SY0, SY1) of the source after its EXIF
// orientation; Flip mirrors the content horizontally afterwards. Every
// Decoder follows it, so implementations agree on every crop.
type Geometry struct {
	X0, X1, Y0, Y1     int
	SX0, SX1, SY0, SY1 float64
	Flip               bool
}

// Geometry draws one sample's geometry for a source of width × height
// (oriented) pixels.
func (p *Pipeline) Geometry(seed uint64, width, height int) Geometry {
	r := rng{s: seed}
	return p.plan(&r, width, height)
}

// axis tracks one dimension through the ops: the virtual image has n pixels,
// of which [c0, c1) hold content, and virtual coordinate v shows source
// coordinate off + sc*v.
type axis struct {
	n, c0, c1 int
	off, sc   float64
}

func (a *axis) resize(m int) {
	f := float64(m) / float64(a.n)
	a.c0 = int(math.Round(float64(a.c0) * f))
	a.c1 = int(math.Round(float64(a.c1) * f))
	a.sc /= f
	a.n = m
}

// crop keeps virtual pixels [at, at+m); at < 0 pads.
func (a *axis) crop(at, m int) {
	a.off += a.sc * float64(at)
	a.c0 = max(a.c0-at, 0)
	a.c1 = min(a.c1-at, m)
	if a.c1 < a.c0 {
		a.c1 = a.c0
	}
	a.n = m
}

func (a *axis) flip() {
	a.off += a.sc * float64(a.n)
	a.sc = -a.sc
	a.c0, a.c1 = a.n-a.c1, a.n-a.c0
}

// plan runs the ops' geometry for one sample of the given (oriented) size,
// drawing randomness from r in op order.
func (p *Pipeline) plan(r *rng, w, h int) Geometry {
	x := axis{n: w, c1: w, sc: 1}
	y := axis{n: h, c1: h, sc: 1}
	for _, op := range p.ops {
		switch op.Kind {
		case RandomResizedCrop:
			top, left, ch, cw := rrcParams(r, x.n, y.n, op.Scale, op.Ratio)
			x.crop(left, cw)
			y.crop(top, ch)
			x.resize(op.Width)
			y.resize(op.Height)
		case Resize:
			nh, nw := op.Height, op.Width
			if nw == 0 {
				nh, nw = resizeShorter(y.n, x.n, op.Height)
			}
			x.resize(nw)
			y.resize(nh)
		case CenterCrop:
			x.crop(centerCropAt(x.n, op.Width), op.Width)
			y.crop(centerCropAt(y.n, op.Height), op.Height)
		case RandomHorizontalFlip:
			if r.float64() < op.P {
				x.flip()
			}
		case Normalize:
		}
	}
	g := Geometry{X0: x.c0, X1: x.c1, Y0: y.c0, Y1: y.c1}
	g.SX0, g.SX1 = x.off+x.sc*float64(x.c0), x.off+x.sc*float64(x.c1)
	if g.SX1 < g.SX0 {
		g.SX0, g.SX1, g.Flip = g.SX1, g.SX0, true
	}
	g.SY0, g.SY1 = y.off+y.sc*float64(y.c0), y.off+y.sc*float64(y.c1)
	return g
}

// rrcParams is torchvision's RandomResizedCrop.get_params: (top, left,
// height, width) of the crop.
func rrcParams(r *rng, width, height int, scale, ratio [2]float64) (int, int, int, int) {
	area := float64(width) * float64(height)
	lr0, lr1 := math.Log(ratio[0]), math.Log(ratio[1])
	for range 10 {
		target := area * r.uniform(scale[0], scale[1])
		aspect := math.Exp(r.uniform(lr0, lr1))
		w := int(math.RoundToEven(math.Sqrt(target * aspect)))
		h := int(math.RoundToEven(math.Sqrt(target / aspect)))
		if 0 < w && w <= width && 0 < h && h <= height {
			i := int(r.below(uint64(height - h + 1)))
			j := int(r.below(uint64(width - w + 1)))
			return i, j, h, w
		}
	}
	// Fallback: a central crop.
	inRatio := float64(width) / float64(height)
	w, h := width, height
	if inRatio < ratio[0] {
		h = int(math.RoundToEven(float64(w) / ratio[0]))
	} else if inRatio > ratio[1] {
		w = int(math.RoundToEven(float64(h) * ratio[1]))
	}
	return (height - h) / 2, (width - w) / 2, h, w
}

// resizeShorter is torchvision's output size for Resize(int): the shorter
// edge becomes size, the longer is scaled and truncated.
func resizeShorter(h, w, size int) (int, int) {
	if w <= h {
		return int(float64(size) * float64(h) / float64(w)), size
	}
	return size, int(float64(size) * float64(w) / float64(h))
}

// centerCropAt is where torchvision's center_crop starts on an axis of n
// pixels for a crop of m: rounded half to even, or minus the left padding
// when the crop is larger.
func centerCropAt(n, m int) int {
	if m > n {
		return -((m - n) / 2)
	}
	return int(math.RoundToEven(float64(n-m) / 2))
}
