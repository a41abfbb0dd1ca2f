package shard

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path"
	"slices"

	"github.com/loaderd/loaderd/decode"
)

// DefaultWindowRows is the shuffle window when a spec names none. Rows are
// shuffled within windows of this many consecutive samples of a rank's share,
// after the blocks themselves are shuffled; memory grows with the window.
const DefaultWindowRows = 16384

// OnError says what a session does with malformed input.
type OnError int

const (
	// Raise ends the session with an error naming the file and place.
	Raise OnError = iota
	// Skip drops the bad block or file, counts it, and goes on.
	Skip
)

// Shuffle asks for a seeded shuffle. The same seed gives the same order on any
// machine; each epoch gets its own permutation.
type Shuffle struct {
	Seed       uint64
	WindowRows int64 // 0: DefaultWindowRows
}

// Spec is a declarative description of a dataset.
type Spec struct {
	Format  string            // "parquet"
	URIs    []string          // absolute paths, globs (with **), or directories
	Columns []string          // top-level columns in order; empty: all
	Shuffle *Shuffle          // nil: file order
	OnError OnError           // Raise or Skip
	Options map[string]string // format-specific
	// Image decodes a column of encoded images and transforms them; nil
	// leaves every column as read.
	Image *decode.Spec
	// Partitions regroups the rows into this many equal partitions for
	// writing (repartition); 0 keeps them as read. Reads are unaffected: the
	// plan splits rows across ranks whatever the blocks, so it is not part of
	// the fingerprint.
	Partitions int
}

// Validate checks the spec's shape; whether files exist is checked on Open.
func (s *Spec) Validate() error {
	if s.Format == "" {
		return Invalidf("dataset format is empty")
	}
	if len(s.URIs) == 0 {
		return Invalidf("dataset has no paths")
	}
	for _, u := range s.URIs {
		if u == "" {
			return Invalidf("dataset path is empty")
		}
		if !IsRemote(u) && !path.IsAbs(u) {
			return Invalidf("dataset path %q is not absolute (the client makes paths absolute)", u)
		}
	}
	seen := map[string]bool{}
	for _, c := range s.Columns {
		if c == "" || seen[c] {
			return Invalidf("column %q is empty or repeated", c)
		}
		seen[c] = true
	}
	if s.Shuffle != nil && s.Shuffle.WindowRows < 0 {
		return Invalidf("shuffle window %d is negative", s.Shuffle.WindowRows)
	}
	if s.Partitions < 0 {
		return Invalidf("partitions %d is negative", s.Partitions)
	}
	if s.OnError != Raise && s.OnError != Skip {
		return Invalidf("unknown on_error %d", s.OnError)
	}
	if s.Image != nil {
		if err := s.Image.Validate(); err != nil {
			return Invalidf("%v", err)
		}
		if len(s.Columns) > 0 && !slices.Contains(s.Columns, s.Image.Column) {
			return Invalidf("decode_image column %q is not among the selected columns %q", s.Image.Column, s.Columns)
		}
	}
	return nil
}

// Fingerprint identifies the data a spec reads (not its order, nor how images
// are decoded): two specs with the same fingerprint yield the same rows and
// can share opened metadata.
func (s *Spec) Fingerprint() string {
	canon := struct {
		Format  string
		URIs    []string
		Columns []string
		OnError OnError
		Options [][2]string
	}{Format: s.Format, URIs: s.URIs, Columns: s.Columns, OnError: s.OnError}
	for k, v := range s.Options {
		canon.Options = append(canon.Options, [2]string{k, v})
	}
	slices.SortFunc(canon.Options, func(a, b [2]string) int {
		if a[0] < b[0] {
			return -1
		}
		if a[0] > b[0] {
			return 1
		}
		return 0
	})
	b, _ := json.Marshal(canon) // cannot fail: plain strings and ints
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
