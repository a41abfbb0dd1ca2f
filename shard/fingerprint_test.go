package shard

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/loaderd/loaderd/tests/corpora"
)

func TestPlanFingerprint(t *testing.T) {
	root := corpora.Path(t, "parquet")
	files := []string{root + "/derived/derived_zipcodes_snappy_rg8192.parquet"}
	open := func(t *testing.T, storeRoot string, spec Spec) *Dataset {
		t.Helper()
		store, err := NewLocalStore([]string{storeRoot})
		if err != nil {
			t.Fatal(err)
		}
		ds, err := Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()})
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
	fp := func(t *testing.T, ds *Dataset, sh *Shuffle, epoch int64, world int, mode Mode) string {
		t.Helper()
		p, err := NewEpochPlan(ds.BlockRows(), sh, epoch, world, mode)
		if err != nil {
			t.Fatal(err)
		}
		return ds.PlanFingerprint(p)
	}
	spec := Spec{Format: "parquet", URIs: files[:1], Columns: []string{"zip_code"}}
	seed := &Shuffle{Seed: 7}
	// Two daemons: separately opened datasets, different stores and caches.
	a := open(t, root, spec)
	b := open(t, filepath.Dir(root), spec)
	base := fp(t, a, seed, 1, 8, Even)
	if got := fp(t, b, &Shuffle{Seed: 7}, 1, 8, Even); got != base {
		t.Fatalf("same plan, two fingerprints: %s and %s", base, got)
	}
	if len(base) != 32 {
		t.Fatalf("fingerprint %q", base)
	}
	// Anything that changes which rank gets which sample changes it.
	other := map[string]string{
		"epoch":       fp(t, a, seed, 2, 8, Even),
		"world size":  fp(t, a, seed, 1, 7, Even),
		"mode":        fp(t, a, seed, 1, 8, Exact),
		"seed":        fp(t, a, &Shuffle{Seed: 8}, 1, 8, Even),
		"window":      fp(t, a, &Shuffle{Seed: 7, WindowRows: 100}, 1, 8, Even),
		"no shuffle":  fp(t, a, nil, 1, 8, Even),
		"columns":     fp(t, open(t, root, Spec{Format: "parquet", URIs: files[:1], Columns: []string{"latitude"}}), seed, 1, 8, Even),
		"block order": fp(t, a, seed, 1, 8, Even),
	}
	// A node that lists one more file under the same glob.
	dir := t.TempDir()
	glob := Spec{Format: "parquet", URIs: []string{dir + "/*.parquet"}, Columns: []string{"zip_code"}}
	copyFile(t, files[0], dir+"/a.parquet")
	one := fp(t, open(t, dir, glob), seed, 1, 8, Even)
	copyFile(t, files[0], dir+"/b.parquet")
	other["files"] = fp(t, open(t, dir, glob), seed, 1, 8, Even)
	other["one file"] = one
	// The same inputs with a different block order (as a daemon with another
	// shuffle would compute) must not collide either.
	p, _ := NewEpochPlan(a.BlockRows(), seed, 1, 8, Even)
	p.order[0], p.order[1] = p.order[1], p.order[0]
	other["block order"] = a.PlanFingerprint(p)
	seen := map[string]string{base: "base"}
	for what, f := range other {
		if prev, dup := seen[f]; dup {
			t.Errorf("changing %s gives the fingerprint of %s: %s", what, prev, f)
		}
		seen[f] = what
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
