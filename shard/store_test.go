package shard

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLocalStoreConfinement(t *testing.T) {
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "train", "sub"), 0o755))
	for _, p := range []string{"train/a.parquet", "train/sub/b.parquet", "train/_SUCCESS", "train/.hidden"} {
		must(os.WriteFile(filepath.Join(root, p), []byte("x"), 0o644))
	}
	must(os.WriteFile(filepath.Join(outside, "secret.parquet"), []byte("s"), 0o644))
	must(os.Symlink(filepath.Join(outside, "secret.parquet"), filepath.Join(root, "train", "link.parquet")))
	must(os.Symlink(outside, filepath.Join(root, "escape")))

	s, err := NewLocalStore([]string{root})
	must(err)

	// A directory lists its files recursively, hidden and _-files left out,
	// but a symlink leading out of the root fails the whole listing.
	if _, err := s.Glob(ctx, filepath.Join(root, "train")); !errors.Is(err, ErrPermission) {
		t.Fatalf("listing with an escaping symlink: %v", err)
	}
	must(os.Remove(filepath.Join(root, "train", "link.parquet")))
	got, err := s.Glob(ctx, filepath.Join(root, "train"))
	must(err)
	if len(got) != 2 || filepath.Base(got[0].URI) != "a.parquet" || filepath.Base(got[1].URI) != "b.parquet" {
		t.Fatalf("directory listing: %+v", got)
	}
	got, err = s.Glob(ctx, filepath.Join(root, "train", "**", "*.parquet"))
	must(err)
	if len(got) != 2 {
		t.Fatalf("** glob: %+v", got)
	}
	for _, bad := range []string{outside, filepath.Join(outside, "*.parquet"), filepath.Join(root, "escape", "secret.parquet"), filepath.Join(root, "..", filepath.Base(outside), "*")} {
		if _, err := s.Glob(ctx, bad); !errors.Is(err, ErrPermission) {
			t.Fatalf("%s: want permission error, got %v", bad, err)
		}
	}
	if _, err := s.Open(ctx, FileInfo{URI: filepath.Join(root, "escape", "secret.parquet")}); !errors.Is(err, ErrPermission) {
		t.Fatalf("open through symlink: %v", err)
	}
	if _, err := s.Glob(ctx, filepath.Join(root, "nope", "*.parquet")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := s.Glob(ctx, "relative/*.parquet"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("relative: %v", err)
	}
}
