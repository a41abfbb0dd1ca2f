package decode

import (
	"bytes"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loaderd/loaderd/tests/corpora"
)

func TestCompileRejects(t *testing.T) {
	crop := Op{Kind: RandomResizedCrop, Height: 224, Width: 224}
	for name, s := range map[string]Spec{
		"no column":       {Ops: []Op{crop}},
		"no ops":          {Column: "image"},
		"shorter only":    {Column: "image", Ops: []Op{{Kind: Resize, Height: 256}}},
		"zero size":       {Column: "image", Ops: []Op{{Kind: CenterCrop, Height: 0, Width: 3}}},
		"huge size":       {Column: "image", Ops: []Op{{Kind: CenterCrop, Height: MaxSide + 1, Width: 3}}},
		"bad scale":       {Column: "image", Ops: []Op{{Kind: RandomResizedCrop, Height: 8, Width: 8, Scale: [2]float64{0.9, 0.1}}}},
		"bad ratio":       {Column: "image", Ops: []Op{{Kind: RandomResizedCrop, Height: 8, Width: 8, Ratio: [2]float64{-1, 2}}}},
		"flip p > 1":      {Column: "image", Ops: []Op{crop, {Kind: RandomHorizontalFlip, P: 1.5}}},
		"mean/std count":  {Column: "image", Ops: []Op{crop, {Kind: Normalize, Mean: []float64{0.5, 0.5}, Std: []float64{1, 1}}}},
		"zero std":        {Column: "image", Ops: []Op{crop, {Kind: Normalize, Mean: []float64{0.5}, Std: []float64{0}}}},
		"normalize first": {Column: "image", Ops: []Op{{Kind: Normalize, Mean: []float64{0.5}, Std: []float64{1}}, crop}},
		"unknown op":      {Column: "image", Ops: []Op{crop, {Kind: 99}}},
	} {
		if _, err := Compile(s); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
	p, err := Compile(Spec{Column: "image", Ops: []Op{{Kind: Resize, Height: 256}, {Kind: CenterCrop, Height: 224, Width: 200}}})
	if err != nil {
		t.Fatal(err)
	}
	if h, w := p.Size(); h != 224 || w != 200 || p.OutBytes() != 224*200*3 || !slices.Equal(p.Shape(), []int64{224, 200, 3}) {
		t.Errorf("size %dx%d, %d bytes, shape %v", h, w, p.OutBytes(), p.Shape())
	}
}

// Output sizes and offsets as torchvision computes them.
func TestTorchvisionSizes(t *testing.T) {
	for _, c := range []struct{ h, w, size, wantH, wantW int }{
		{375, 500, 256, 256, 341}, // int(256 * 500 / 375) = 341
		{500, 375, 256, 341, 256},
		{100, 100, 32, 32, 32},
		{3, 1000, 7, 7, 2333},
	} {
		if h, w := resizeShorter(c.h, c.w, c.size); h != c.wantH || w != c.wantW {
			t.Errorf("resize(%d) of %dx%d: %dx%d, want %dx%d", c.size, c.w, c.h, w, h, c.wantW, c.wantH)
		}
	}
	// Python's round((n-m)/2) rounds half to even; larger crops pad
	// (m-n)//2 on the left.
	for _, c := range []struct{ n, m, want int }{{10, 4, 3}, {11, 4, 4}, {13, 4, 4}, {15, 4, 6}, {4, 4, 0}, {7, 16, -4}, {7, 12, -2}} {
		if got := centerCropAt(c.n, c.m); got != c.want {
			t.Errorf("centerCropAt(%d, %d) = %d, want %d", c.n, c.m, got, c.want)
		}
	}
}

func TestRandomResizedCropParams(t *testing.T) {
	for seed := range uint64(2000) {
		r := rng{s: seed}
		w, h := 50+int(seed%450), 40+int(seed*7%400)
		top, left, ch, cw := rrcParams(&r, w, h, defaultScale, defaultRatio)
		if top < 0 || left < 0 || ch < 1 || cw < 1 || top+ch > h || left+cw > w {
			t.Fatalf("seed %d: crop (%d,%d) %dx%d outside %dx%d", seed, left, top, cw, ch, w, h)
		}
		area := float64(cw*ch) / float64(w*h)
		ratio := float64(cw) / float64(ch)
		fallback := cw == w || ch == h
		if !fallback && (area < 0.06 || area > 1.02 || ratio < 0.7 || ratio > 1.4) {
			t.Fatalf("seed %d: area %.3f ratio %.3f outside torchvision's defaults", seed, area, ratio)
		}
	}
	// A crop that cannot fit (scale > 1) falls back to the central one.
	r := rng{s: 1}
	if top, left, ch, cw := rrcParams(&r, 400, 100, [2]float64{2, 3}, defaultRatio); cw != 133 || ch != 100 || top != 0 || left != 133 {
		t.Errorf("fallback crop (%d,%d) %dx%d, want (133,0) 133x100", left, top, cw, ch)
	}
}

// The geometry of a seed is part of the reproducibility contract: the same
// (seed, epoch, row) must give the same crop on every machine and in every
// later version. A change here changes every user's augmentations.
func TestGeometryIsStable(t *testing.T) {
	p, err := Compile(Spec{Column: "image", Seed: 42, Ops: []Op{
		{Kind: RandomResizedCrop, Height: 224, Width: 224}, {Kind: RandomHorizontalFlip, P: 0.5}}})
	if err != nil {
		t.Fatal(err)
	}
	got := p.Geometry(p.SampleSeed(3, 12345), 500, 375)
	want := Geometry{X0: 0, X1: 224, Y0: 0, Y1: 224, SX0: 256, SX1: 472, SY0: 18, SY1: 184, Flip: false}
	if got != want {
		t.Errorf("geometry %+v, want %+v", got, want)
	}
	if p.SampleSeed(3, 12345) == p.SampleSeed(3, 12346) || p.SampleSeed(3, 12345) == p.SampleSeed(4, 12345) {
		t.Error("sample seeds collide")
	}
}

func TestGeometryComposes(t *testing.T) {
	// resize(256) then center_crop(224) of 500x375: torchvision resizes to
	// 341x256 and crops at (58, 16).
	p, err := Compile(Spec{Column: "image", Ops: []Op{{Kind: Resize, Height: 256}, {Kind: CenterCrop, Height: 224, Width: 224}}})
	if err != nil {
		t.Fatal(err)
	}
	g := p.Geometry(0, 500, 375)
	sx, sy := 500.0/341, 375.0/256
	want := Geometry{X1: 224, Y1: 224, SX0: 58 * sx, SX1: 282 * sx, SY0: 16 * sy, SY1: 240 * sy}
	if math.Abs(g.SX0-want.SX0) > 1e-9 || math.Abs(g.SX1-want.SX1) > 1e-9 || math.Abs(g.SY0-want.SY0) > 1e-9 ||
		math.Abs(g.SY1-want.SY1) > 1e-9 || g.X1 != 224 || g.Y1 != 224 || g.Flip {
		t.Errorf("geometry %+v, want %+v", g, want)
	}
	// A flip before a crop mirrors the crop's place: the crop starts at
	// round(21/2) = 10 of the flipped 31 columns, which are 11..21 of the
	// original.
	p, err = Compile(Spec{Column: "image", Ops: []Op{{Kind: RandomHorizontalFlip, P: 1}, {Kind: CenterCrop, Height: 10, Width: 10}, {Kind: Resize, Height: 5, Width: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	g = p.Geometry(0, 31, 10)
	if g.SX0 != 11 || g.SX1 != 21 || !g.Flip {
		t.Errorf("flipped center crop %+v, want source x 11..21 flipped", g)
	}
}

// The C kernels of the cgo build and the Go kernels give the same bytes.
func TestKernelsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		ch := []int{1, 3, 4}[r.IntN(3)]
		w, h := 1+r.IntN(300), 1+r.IntN(300)
		src := make([]byte, w*h*ch)
		for i := range src {
			src[i] = byte(r.IntN(256))
		}
		ow, oh := 1+r.IntN(200), 1+r.IntN(200)
		x0, y0 := r.Float64()*float64(w)/2, r.Float64()*float64(h)/2
		x1, y1 := x0+(float64(w)-x0)*(0.2+0.8*r.Float64()), y0+(float64(h)-y0)*(0.2+0.8*r.Float64())
		var cx, cy coeffs
		cx.compute(w, x0, x1, ow)
		cy.compute(h, y0, y1, oh)
		a, b := make([]byte, h*ow*ch), make([]byte, h*ow*ch)
		goHPass(a, ow*ch, src, w*ch, h, ow, ch, &cx, nil)
		hpass(b, ow*ch, src, w*ch, h, ow, ch, &cx, &hscratch{})
		if !bytes.Equal(a, b) {
			t.Fatalf("horizontal pass differs (%dx%dx%d → %d)", w, h, ch, ow)
		}
		acc := make([]int32, ow*ch)
		va, vb := make([]byte, oh*ow*ch), make([]byte, oh*ow*ch)
		goVPass(va, ow*ch, a, ow*ch, ow*ch, oh, &cy, acc)
		vpass(vb, ow*ch, a, ow*ch, ow*ch, oh, &cy, acc)
		if !bytes.Equal(va, vb) {
			t.Fatalf("vertical pass differs (%dx%dx%d → %dx%d)", w, h, ch, ow, oh)
		}
	}
}

// Headers agree with Go's DecodeConfig wherever Go reads the file.
func TestParseHeaderMatchesGo(t *testing.T) {
	n := 0
	for _, dir := range []string{"images", "bad-images"} {
		err := filepath.Walk(corpora.Path(t, dir), func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || strings.HasSuffix(path, ".tsv") || strings.Contains(path, "LICENSE") || strings.Contains(path, "README") {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			cfg, _, gerr := image.DecodeConfig(bytes.NewReader(data))
			h, herr := ParseHeader(data)
			if gerr == nil && cfg.Width > 0 && cfg.Height > 0 && herr == nil {
				if h.Width != cfg.Width || h.Height != cfg.Height {
					t.Errorf("%s: header %dx%d, Go %dx%d", path, h.Width, h.Height, cfg.Width, cfg.Height)
				}
				n++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n < 300 {
		t.Errorf("only %d headers compared", n)
	}
	for name, o := range map[string]int{"Landscape_1.jpg": 1, "Landscape_3.jpg": 3, "Landscape_6.jpg": 6, "Landscape_8.jpg": 8, "Portrait_5.jpg": 5} {
		data, err := os.ReadFile(corpora.Path(t, "images", "tricky", "exif-orientation", name))
		if err != nil {
			t.Fatal(err)
		}
		if h, err := ParseHeader(data); err != nil || h.Orientation != o {
			t.Errorf("%s: orientation %d (%v), want %d", name, h.Orientation, err, o)
		}
	}
}

func TestTensorType(t *testing.T) {
	p, err := Compile(Spec{Column: "image", Ops: []Op{{Kind: CenterCrop, Height: 2, Width: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	typ := p.OutputType()
	if typ.ExtensionName() != "arrow.fixed_shape_tensor" || typ.Serialize() != `{"shape":[2,3,3]}` {
		t.Errorf("type %s metadata %s", typ.ExtensionName(), typ.Serialize())
	}
	back, err := typ.Deserialize(typ.StorageType(), typ.Serialize())
	if err != nil || !typ.ExtensionEquals(back) {
		t.Errorf("round trip: %v %v", back, err)
	}
	if _, err := typ.Deserialize(typ.StorageType(), `{"shape":[5,5]}`); err == nil {
		t.Error("a shape that does not fit its storage was accepted")
	}
}
