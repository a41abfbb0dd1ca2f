package shard

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	"github.com/dustin/go-humanize"
)

// MemScheme is the scheme of uploaded tables: mem://<sha256 of the bytes>.
const MemScheme = "mem"

// MemStore holds the tables clients upload (loaderd.from_items, from_pandas,
// from_arrow, range): each is one Parquet file named by the SHA-256 of its
// bytes, "mem://<hex>", and is read, sharded and cached like any other file.
//
// It holds at most its budget. Room for a new upload is made by dropping the
// least recently used tables; a dataset whose table was dropped, or a daemon
// that restarted, answers ErrNotFound — at open, or at the next block a
// running session reads that the block cache does not hold — and the client
// uploads the table again (it keeps the bytes) and continues where it was.
type MemStore struct {
	budget int64
	charge func(int64) // counts held bytes in the daemon's memory budget

	mu        sync.Mutex
	used      int64 // held tables and reserved uploads
	tables    map[string]*memTable
	recent    list.List // of *memTable, most recently used first
	uploads   int64     // uploads completed
	evictions int64
}

type memTable struct {
	digest string
	data   []byte
	elem   *list.Element
}

// NewMemStore returns a store of at most budget bytes; charge, when not nil,
// is told of every byte held and released (the daemon's memory budget).
func NewMemStore(budget int64, charge func(int64)) *MemStore {
	if charge == nil {
		charge = func(int64) {}
	}
	return &MemStore{budget: budget, charge: charge, tables: map[string]*memTable{}}
}

// MemURI is the URI of the table with this digest.
func MemURI(digest string) string { return MemScheme + "://" + digest }

// MemStats is what a MemStore holds.
type MemStats struct {
	Budget, Bytes      int64 // Bytes: the tables held
	Tables             int
	Uploads, Evictions int64
	Reserved           int64 // held by uploads in progress
}

// Stats reports the store's contents.
func (s *MemStore) Stats() MemStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.heldLocked()
	return MemStats{Budget: s.budget, Bytes: held, Tables: len(s.tables), Uploads: s.uploads,
		Evictions: s.evictions, Reserved: s.used - held}
}

// heldLocked is the bytes of the tables held.
func (s *MemStore) heldLocked() int64 {
	held := int64(0)
	for _, t := range s.tables {
		held += int64(len(t.data))
	}
	return held
}

// checkDigest accepts a SHA-256 in lowercase hex.
func checkDigest(d string) error {
	if len(d) != 2*sha256.Size || strings.ToLower(d) != d {
		return Invalidf("upload digest %q: want the SHA-256 of the bytes in lowercase hex", d)
	}
	if _, err := hex.DecodeString(d); err != nil {
		return Invalidf("upload digest %q: %v", d, err)
	}
	return nil
}

// digestOf parses mem://<digest>.
func digestOf(uri string) (string, error) {
	d, ok := strings.CutPrefix(uri, MemScheme+"://")
	if !ok {
		return "", Invalidf("%s: not a mem:// URI", uri)
	}
	if err := checkDigest(d); err != nil {
		return "", fmt.Errorf("%s: %w", uri, err)
	}
	return d, nil
}

// lookup finds a table and marks it used; nil when absent.
func (s *MemStore) lookup(digest string) *memTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[digest]
	if t != nil {
		s.recent.MoveToFront(t.elem)
	}
	return t
}

// Has reports whether the table with this digest is held.
func (s *MemStore) Has(digest string) bool { return s.lookup(digest) != nil }

func notUploaded(uri string) error {
	return fmt.Errorf("%w: %s: no uploaded table has this digest (the daemon restarted or dropped it "+
		"to make room for newer uploads); upload it again", ErrNotFound, uri)
}

// Glob implements Store: a mem:// URI names exactly one table.
func (s *MemStore) Glob(_ context.Context, pattern string) ([]FileInfo, error) {
	d, err := digestOf(pattern)
	if err != nil {
		return nil, err
	}
	t := s.lookup(d)
	if t == nil {
		return nil, notUploaded(pattern)
	}
	return []FileInfo{{URI: pattern, Size: int64(len(t.data)), Version: d}}, nil
}

// Open implements Store.
func (s *MemStore) Open(_ context.Context, f FileInfo) (File, error) {
	d, err := digestOf(f.URI)
	if err != nil {
		return nil, err
	}
	t := s.lookup(d)
	if t == nil {
		return nil, notUploaded(f.URI)
	}
	return memFile{bytes.NewReader(t.data)}, nil
}

type memFile struct{ *bytes.Reader }

func (memFile) Close() error { return nil }

// Begin reserves room for a table of size bytes whose SHA-256 is digest,
// dropping the least recently used tables as needed. The caller writes the
// bytes to the Upload and commits it, or aborts it.
func (s *MemStore) Begin(digest string, size int64) (*Upload, error) {
	if err := checkDigest(digest); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, Invalidf("upload of %d bytes: want a positive size", size)
	}
	if size > s.budget {
		return nil, fmt.Errorf("%w: a table of %s is larger than the room for uploads (upload-bytes %s): "+
			"raise the daemon's --upload-bytes, or write the data to files and read those", ErrExhausted,
			humanize.IBytes(uint64(size)), humanize.IBytes(uint64(max(s.budget, 0))))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Tables can make room; uploads in progress cannot. Drop nothing unless
	// the upload then fits.
	if inProgress := s.used - s.heldLocked(); size > s.budget-inProgress {
		return nil, fmt.Errorf("%w: uploads in progress hold %s of the %s for uploads; try again when "+
			"they are done", ErrExhausted, humanize.IBytes(uint64(inProgress)), humanize.IBytes(uint64(s.budget)))
	}
	for s.used+size > s.budget {
		s.dropLocked(s.recent.Back().Value.(*memTable))
	}
	s.used += size
	s.charge(size)
	return &Upload{s: s, digest: digest, buf: make([]byte, 0, size)}, nil
}

func (s *MemStore) dropLocked(t *memTable) {
	s.recent.Remove(t.elem)
	delete(s.tables, t.digest)
	n := int64(len(t.data))
	s.used -= n
	s.charge(-n)
	s.evictions++
}

// Upload is one table being received.
type Upload struct {
	s      *MemStore
	digest string
	buf    []byte // capacity: the size reserved
	ended  bool
}

// Write appends the next bytes; more than the size given to Begin is an error.
func (u *Upload) Write(p []byte) (int, error) {
	if len(u.buf)+len(p) > cap(u.buf) {
		return 0, Invalidf("upload sends more than the %d bytes it declared", cap(u.buf))
	}
	u.buf = append(u.buf, p...)
	return len(p), nil
}

// Commit checks the size and digest and makes the table readable at its URI.
// It ends the upload either way.
func (u *Upload) Commit() (FileInfo, error) {
	if u.ended {
		return FileInfo{}, Invalidf("upload already ended")
	}
	size := int64(cap(u.buf))
	if int64(len(u.buf)) != size {
		u.Abort()
		return FileInfo{}, Invalidf("upload ended after %d of the %d bytes it declared", len(u.buf), size)
	}
	sum := sha256.Sum256(u.buf)
	if got := hex.EncodeToString(sum[:]); got != u.digest {
		u.Abort()
		return FileInfo{}, Invalidf("upload's bytes have SHA-256 %s, not the %s declared", got, u.digest)
	}
	u.ended = true
	s := u.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uploads++
	if t := s.tables[u.digest]; t != nil {
		// Another upload of the same table finished first: keep that one.
		s.used -= size
		s.charge(-size)
		s.recent.MoveToFront(t.elem)
	} else {
		t := &memTable{digest: u.digest, data: u.buf}
		t.elem = s.recent.PushFront(t)
		s.tables[u.digest] = t
	}
	u.buf = nil
	return FileInfo{URI: MemURI(u.digest), Size: size, Version: u.digest}, nil
}

// Abort gives back the room of an upload that did not commit; it is safe to
// call after Commit.
func (u *Upload) Abort() {
	if u.ended {
		return
	}
	u.ended = true
	size := int64(cap(u.buf))
	u.buf = nil
	u.s.mu.Lock()
	u.s.used -= size
	u.s.mu.Unlock()
	u.s.charge(-size)
}
