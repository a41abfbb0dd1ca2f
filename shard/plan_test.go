package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// ids lists the dataset-order row ids of rank r's samples, in delivery order.
func ids(t *testing.T, rp *RankPlan, blockRows []int64) (out []int64, padding []bool) {
	t.Helper()
	base := make([]int64, len(blockRows)+1)
	for i, n := range blockRows {
		base[i+1] = base[i] + n
	}
	for k := int64(0); k < rp.Len(); {
		w, err := rp.Window(k)
		if err != nil {
			t.Fatal(err)
		}
		if w.First != k {
			t.Fatalf("window at %d starts at %d", k, w.First)
		}
		var rows []int64
		for _, s := range w.Segments {
			if s.Lo < 0 || s.Hi > blockRows[s.Block] || s.Lo >= s.Hi {
				t.Fatalf("bad segment %+v of block with %d rows", s, blockRows[s.Block])
			}
			for r := s.Lo; r < s.Hi; r++ {
				rows = append(rows, base[s.Block]+r)
			}
		}
		if int64(len(rows)) != w.Len {
			t.Fatalf("window %+v covers %d rows", w, len(rows))
		}
		for i := int64(0); i < w.Len; i++ {
			j := i
			if w.Perm != nil {
				j = int64(w.Perm[i])
			}
			out = append(out, rows[j])
			padding = append(padding, w.Padding)
		}
		k += w.Len
	}
	return out, padding
}

func layouts() map[string][]int64 {
	r := rand.New(rand.NewPCG(1, 2))
	ls := map[string][]int64{
		"empty":          {},
		"one-empty-file": {0},
		"one-row":        {1},
		"zeros-between":  {0, 3, 0, 0, 5, 0},
		"uneven":         {1000, 1, 17, 250, 3},
		"many-small":     slices.Repeat([]int64{7}, 40),
		"big-block":      {70000, 5},
	}
	for i := 0; i < 6; i++ {
		n := 1 + r.IntN(30)
		b := make([]int64, n)
		for j := range b {
			b[j] = int64(r.IntN(400))
		}
		ls[fmt.Sprintf("random-%d", i)] = b
	}
	return ls
}

func TestPlanExactlyOnce(t *testing.T) {
	worlds := []int{1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 64}
	for name, rows := range layouts() {
		var total int64
		for _, n := range rows {
			total += n
		}
		for _, world := range worlds {
			for _, sh := range []*Shuffle{nil, {Seed: 42, WindowRows: 64}, {Seed: 7}} {
				for _, mode := range []Mode{Exact, Even} {
					t.Run(fmt.Sprintf("%s/w%d/shuffle=%v/%s", name, world, sh != nil, mode), func(t *testing.T) {
						p, err := NewEpochPlan(rows, sh, 3, world, mode)
						if err != nil {
							t.Fatal(err)
						}
						seen := make([]int, total)
						var counts []int64
						for r := 0; r < world; r++ {
							rp, err := p.Rank(r)
							if err != nil {
								t.Fatal(err)
							}
							got, pad := ids(t, rp, rows)
							counts = append(counts, int64(len(got)))
							var npad int64
							for i, id := range got {
								if pad[i] {
									npad++
									continue
								}
								if npad > 0 {
									t.Fatalf("rank %d: real sample after padding", r)
								}
								seen[id]++
							}
							if npad != rp.Padding() {
								t.Fatalf("rank %d: %d padding samples, plan says %d", r, npad, rp.Padding())
							}
						}
						for id, n := range seen {
							if n != 1 {
								t.Fatalf("row %d delivered %d times", id, n)
							}
						}
						lo, hi := slices.Min(counts), slices.Max(counts)
						switch mode {
						case Exact:
							if hi-lo > 1 {
								t.Fatalf("exact counts differ by %d: %v", hi-lo, counts)
							}
						case Even:
							if lo != hi {
								t.Fatalf("even counts differ: %v", counts)
							}
							if want := (total + int64(world) - 1) / int64(world); total > 0 && hi != want {
								t.Fatalf("even count %d, want %d", hi, want)
							}
						}
					})
				}
			}
		}
	}
}

func order(t *testing.T, rows []int64, sh *Shuffle, epoch int64, world int) [][]int64 {
	t.Helper()
	p, err := NewEpochPlan(rows, sh, epoch, world, Exact)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]int64
	for r := 0; r < world; r++ {
		rp, _ := p.Rank(r)
		got, _ := ids(t, rp, rows)
		out = append(out, got)
	}
	return out
}

func TestPlanShuffleDeterministicAndPerEpoch(t *testing.T) {
	rows := []int64{500, 300, 200, 1000, 20, 480}
	for seed := uint64(0); seed < 20; seed++ {
		sh := &Shuffle{Seed: seed, WindowRows: 256}
		a := order(t, rows, sh, 0, 4)
		b := order(t, rows, &Shuffle{Seed: seed, WindowRows: 256}, 0, 4)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("seed %d: same inputs, different order", seed)
		}
		if c := order(t, rows, sh, 1, 4); fmt.Sprint(a) == fmt.Sprint(c) {
			t.Fatalf("seed %d: epochs 0 and 1 have the same order", seed)
		}
		if d := order(t, rows, &Shuffle{Seed: seed + 1000, WindowRows: 256}, 0, 4); fmt.Sprint(a) == fmt.Sprint(d) {
			t.Fatalf("seeds %d and %d give the same order", seed, seed+1000)
		}
	}
	// Unshuffled: file order, the same in every epoch.
	a, b := order(t, rows, nil, 0, 1), order(t, rows, nil, 5, 1)
	if !slices.IsSorted(a[0]) || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("unshuffled plan is not file order in every epoch")
	}
}

// The permutation is pinned: a change here silently reorders every user's
// shuffled datasets and breaks resumption across daemon versions.
func TestPlanGolden(t *testing.T) {
	got := order(t, []int64{3, 2, 4}, &Shuffle{Seed: 42, WindowRows: 4}, 1, 2)
	want := "[[7 5 6 8 0] [4 2 3 1]]"
	if fmt.Sprint(got) != want {
		t.Fatalf("golden order changed: got %v, want %s", got, want)
	}
}

func TestPlanRejectsBadArguments(t *testing.T) {
	if _, err := NewEpochPlan([]int64{1}, nil, 0, 0, Exact); err == nil {
		t.Fatal("world size 0 accepted")
	}
	if _, err := NewEpochPlan([]int64{1}, nil, -1, 1, Exact); err == nil {
		t.Fatal("negative epoch accepted")
	}
	p, _ := NewEpochPlan([]int64{1}, nil, 0, 2, Exact)
	if _, err := p.Rank(2); err == nil {
		t.Fatal("rank 2 of 2 accepted")
	}
	rp, _ := p.Rank(0)
	if _, err := rp.Window(1); err == nil {
		t.Fatal("sample beyond the rank's share accepted")
	}
}

func TestRNGBelowUniform(t *testing.T) {
	r := newRNG(1, 2, 3, 4)
	var hist [7]int
	for i := 0; i < 70000; i++ {
		hist[r.below(7)]++
	}
	for v, n := range hist {
		if n < 9000 || n > 11000 {
			t.Fatalf("value %d drawn %d times of 70000", v, n)
		}
	}
}
