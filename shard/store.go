package shard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
)

// FileInfo identifies one version of one file.
type FileInfo struct {
	URI     string // absolute path or object URI
	Size    int64
	Version string // changes whenever the content may have changed
}

// File is an open file: random access by byte range.
type File interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Store lists and opens files. The local store confines paths to data roots;
// object stores (s3://, gs://) implement the same interface.
type Store interface {
	// Glob returns the files a path, directory or pattern names, sorted by URI.
	Glob(ctx context.Context, pattern string) ([]FileInfo, error)
	// Open opens one file for reading.
	Open(ctx context.Context, f FileInfo) (File, error)
}

// IsRemote reports whether a URI names an object store rather than a local path.
func IsRemote(uri string) bool { return strings.Contains(uri, "://") }

// LocalStore serves local files inside a fixed set of data roots. Every path is
// resolved through symlinks before it is checked, so a link cannot lead out.
type LocalStore struct {
	roots []string // resolved, cleaned
}

// NewLocalStore returns a store confined to roots, which must exist.
func NewLocalStore(roots []string) (*LocalStore, error) {
	s := &LocalStore{}
	for _, r := range roots {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, fmt.Errorf("data root %q: %w", r, err)
		}
		res, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, fmt.Errorf("data root %q: %w", r, err)
		}
		s.roots = append(s.roots, filepath.Clean(res))
	}
	return s, nil
}

// Roots returns the resolved data roots.
func (s *LocalStore) Roots() []string { return slices.Clone(s.roots) }

func (s *LocalStore) inside(resolved string) bool {
	for _, r := range s.roots {
		if resolved == r || strings.HasPrefix(resolved, r+string(filepath.Separator)) || r == "/" {
			return true
		}
	}
	return false
}

// resolve follows symlinks and checks the result lies inside a root.
func (s *LocalStore) resolve(p string) (string, error) {
	res, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: %s does not exist", ErrNotFound, p)
		}
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if !s.inside(res) {
		return "", fmt.Errorf("%w: %s resolves to %s, outside the data roots %v (see --data-root)",
			ErrPermission, p, res, s.roots)
	}
	return res, nil
}

// Glob implements Store. A directory means every regular file below it whose
// name does not start with "." or "_" (so _SUCCESS and _metadata are left out).
func (s *LocalStore) Glob(ctx context.Context, pattern string) ([]FileInfo, error) {
	if IsRemote(pattern) {
		return nil, fmt.Errorf("%w: %s: no object store is configured for this scheme", ErrUnsupported, pattern)
	}
	if !filepath.IsAbs(pattern) {
		return nil, Invalidf("path %q is not absolute", pattern)
	}
	pattern = filepath.Clean(pattern)
	var matches []string
	if !strings.ContainsAny(pattern, "*?[{") {
		// The path itself must lie inside a root before it is even stat'ed.
		res, err := s.resolve(pattern)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(res)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", pattern, err)
		}
		if !st.IsDir() {
			matches = []string{pattern}
		}
		pattern += "/**"
	} else {
		// The fixed part of the pattern must lie inside a root: nothing
		// outside the roots is listed, not even to be rejected.
		base, _ := doublestar.SplitPattern(filepath.ToSlash(pattern))
		if _, err := s.resolve(filepath.FromSlash(base)); err != nil {
			return nil, err
		}
	}
	if matches == nil {
		var err error
		matches, err = doublestar.FilepathGlob(pattern, doublestar.WithFilesOnly(), doublestar.WithFailOnIOErrors())
		if err != nil {
			return nil, fmt.Errorf("glob %s: %w", pattern, err)
		}
	}
	var out []FileInfo
	for _, m := range matches {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if name := filepath.Base(m); strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			continue
		}
		res, err := s.resolve(m)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(res)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		if !st.Mode().IsRegular() {
			continue
		}
		out = append(out, FileInfo{
			URI:     m,
			Size:    st.Size(),
			Version: fmt.Sprintf("%d-%d", st.ModTime().UnixNano(), st.Size()),
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s matches no files", ErrNotFound, pattern)
	}
	slices.SortFunc(out, func(a, b FileInfo) int { return strings.Compare(a.URI, b.URI) })
	return out, nil
}

// Open implements Store.
func (s *LocalStore) Open(_ context.Context, f FileInfo) (File, error) {
	res, err := s.resolve(f.URI)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(res)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.URI, err)
	}
	return &localFile{File: fh, size: f.Size}, nil
}

type localFile struct {
	*os.File
	size int64
}

func (f *localFile) Size() int64 { return f.size }

// ObserveReads wraps a store so that every read from its files is reported
// to obs: the bytes read and the time it took (for metrics).
func ObserveReads(s Store, obs func(n int, d time.Duration)) Store {
	return &observedStore{Store: s, obs: obs}
}

type observedStore struct {
	Store
	obs func(int, time.Duration)
}

func (s *observedStore) Open(ctx context.Context, f FileInfo) (File, error) {
	inner, err := s.Store.Open(ctx, f)
	if err != nil {
		return nil, err
	}
	return &observedFile{File: inner, obs: s.obs}, nil
}

type observedFile struct {
	File
	obs func(int, time.Duration)
}

func (f *observedFile) ReadAt(p []byte, off int64) (int, error) {
	t0 := time.Now()
	n, err := f.File.ReadAt(p, off)
	f.obs(n, time.Since(t0))
	return n, err
}

// Router sends each URI to the store of its scheme: local paths to Local,
// "s3://..." and "gs://..." to the stores in Remote (by scheme).
type Router struct {
	Local  Store
	Remote map[string]Store
}

func (r Router) pick(uri string) (Store, error) {
	scheme, _, ok := strings.Cut(uri, "://")
	if !ok {
		return r.Local, nil
	}
	if s := r.Remote[scheme]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("%w: %s: no store serves %s:// URIs", ErrUnsupported, uri, scheme)
}

// Glob implements Store.
func (r Router) Glob(ctx context.Context, pattern string) ([]FileInfo, error) {
	s, err := r.pick(pattern)
	if err != nil {
		return nil, err
	}
	return s.Glob(ctx, pattern)
}

// Open implements Store.
func (r Router) Open(ctx context.Context, f FileInfo) (File, error) {
	s, err := r.pick(f.URI)
	if err != nil {
		return nil, err
	}
	return s.Open(ctx, f)
}
