package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Errors of a ring.
var (
	// ErrTooLarge means a batch is larger than the ring's whole data area.
	ErrTooLarge = errors.New("shm: batch larger than the ring")
	// ErrFull means the ring had no room for a batch within the patience
	// allowed: the client keeps the batches it has.
	ErrFull = errors.New("shm: ring full")
	// ErrClosed means the ring was closed.
	ErrClosed = errors.New("shm: ring closed")
	// ErrUnknownSlot means a release named no batch in the ring.
	ErrUnknownSlot = errors.New("shm: no such batch in the ring")
)

// Seals a ring carries once made: its size is fixed (a client's mapping can
// never be cut short under it) and no new writable mapping or write(2) is
// possible, so the daemon's own mapping is the only writer; F_SEAL_SEAL
// keeps anyone from changing that.
const ringSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL

// Slot is where one batch lies in a ring.
type Slot struct {
	Index  int   // in [0, Header.Slots)
	Offset int64 // from the start of the memfd
	Len    int64 // of the batch's bytes
}

// Stats is a ring's state for status reports.
type Stats struct {
	Bytes     int64 // of the data area
	BytesHeld int64 // in slots written and not yet released
	SlotsHeld int
	// Waited is how long the writer was blocked on a full ring, in total.
	Waited time.Duration
}

// Ring is one session's shared-memory ring. One goroutine writes (Alloc,
// Fill, then Close); releases and hand-offs may come from others.
type Ring struct {
	fd    int
	mem   []byte
	hdr   Header
	freed chan struct{} // a token after each release, for a waiting Alloc

	mu        sync.Mutex
	a         *allocator
	closed    bool
	stalled   bool // a wait ran out of patience; cleared by the next release
	waited    time.Duration
	waitSince time.Time
}

// NewRing creates a ring of at least dataBytes of data (rounded up to
// pages) holding at most slots batches at once. name shows in /proc maps.
//
// The ring is mapped once and its slots reused, so each page is faulted in
// once, on its first write. It is not pre-faulted (MAP_POPULATE, fallocate):
// allocating a page costs the same then or later (about 1 GB/s on the
// reference VM, where a 256 MiB ring took 0.3 s to pre-fault), so
// pre-faulting would only delay a session's first batch by the whole ring's
// cost, and allocate pages a fast consumer never lets the ring reach (the
// allocator starts over at offset 0 whenever the ring is empty).
func NewRing(name string, dataBytes int64, slots int) (*Ring, error) {
	if dataBytes <= 0 || slots <= 0 {
		return nil, fmt.Errorf("shm: ring of %d bytes and %d slots", dataBytes, slots)
	}
	page := int64(os.Getpagesize())
	data := (dataBytes + page - 1) / page * page
	size := HeaderSize + data
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create: %w", err)
	}
	fail := func(err error) (*Ring, error) {
		_ = unix.Close(fd)
		return nil, err
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return fail(fmt.Errorf("shm: sizing a ring of %d bytes: %w", size, err))
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("shm: mapping the ring: %w", err))
	}
	hdr := Header{Version: Version, Size: size, DataOffset: HeaderSize, DataBytes: data, Slots: uint32(slots), Align: Align}
	hdr.put(mem)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, ringSeals); err != nil {
		_ = unix.Munmap(mem)
		return fail(fmt.Errorf("shm: sealing the ring: %w", err))
	}
	return &Ring{fd: fd, mem: mem, hdr: hdr, freed: make(chan struct{}, 1), a: newAllocator(data, Align, slots)}, nil
}

// Header describes the ring's layout.
func (r *Ring) Header() Header { return r.hdr }

// Alloc reserves a slot of n bytes for the batch with sequence number key.
// When the ring has no room it waits for a release, up to patience; then it
// returns ErrFull, and keeps returning ErrFull at once until the next
// release, so a client that keeps its batches pays the wait once and not for
// every batch. ErrTooLarge means the batch can never fit.
func (r *Ring) Alloc(ctx context.Context, key, n int64, patience time.Duration) (Slot, error) {
	if !r.a.fits(n) { // size and alignment never change: no lock needed
		return Slot{}, fmt.Errorf("%w: %d bytes, ring of %d", ErrTooLarge, n, r.hdr.DataBytes)
	}
	var timer *time.Timer
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return Slot{}, ErrClosed
		}
		if e, ok := r.a.alloc(key, n); ok {
			r.endWaitLocked()
			r.mu.Unlock()
			return Slot{Index: e.slot, Offset: r.hdr.DataOffset + e.off, Len: n}, nil
		}
		if r.stalled {
			r.mu.Unlock()
			return Slot{}, ErrFull
		}
		if timer == nil {
			r.waitSince = time.Now()
			timer = time.NewTimer(patience)
			defer timer.Stop()
		}
		r.mu.Unlock()
		select {
		case <-r.freed:
		case <-timer.C:
			r.mu.Lock()
			r.stalled = true
			r.endWaitLocked()
			r.mu.Unlock()
			return Slot{}, ErrFull
		case <-ctx.Done():
			r.mu.Lock()
			r.endWaitLocked()
			r.mu.Unlock()
			return Slot{}, context.Cause(ctx)
		}
	}
}

func (r *Ring) endWaitLocked() {
	if !r.waitSince.IsZero() {
		r.waited += time.Since(r.waitSince)
		r.waitSince = time.Time{}
	}
}

// Fill writes a slot's bytes with write, which must write exactly s.Len
// bytes. Only the goroutine that allocated s may call it, before Close.
func (r *Ring) Fill(s Slot, write func(io.Writer) error) error {
	w := sliceWriter{b: r.mem[s.Offset : s.Offset+s.Len : s.Offset+s.Len]}
	if err := write(&w); err != nil {
		return err
	}
	if w.n != len(w.b) {
		return fmt.Errorf("shm: %d of the slot's %d bytes written", w.n, len(w.b))
	}
	return nil
}

// Release frees the slot of batch key: the client is done with it. After
// Close it does nothing.
func (r *Ring) Release(key int64) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	_, ok := r.a.release(key)
	if ok {
		r.stalled = false
	}
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: batch %d", ErrUnknownSlot, key)
	}
	select {
	case r.freed <- struct{}{}:
	default:
	}
	return nil
}

// Stats reports the ring's state.
func (r *Ring) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{Bytes: r.hdr.DataBytes, BytesHeld: r.a.used, SlotsHeld: len(r.a.live), Waited: r.waited}
	if !r.waitSince.IsZero() {
		st.Waited += time.Since(r.waitSince)
	}
	return st
}

// Dup returns a new descriptor of the ring's memfd (close-on-exec), to be
// handed to the client and closed by the caller.
func (r *Ring) Dup() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return -1, ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("shm: dup: %w", err)
	}
	return fd, nil
}

// Close unmaps the ring and closes its memfd. The memory lives on while a
// client still maps it, and is freed with the last mapping.
func (r *Ring) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return errors.Join(unix.Munmap(r.mem), unix.Close(r.fd))
}

// sliceWriter writes into a fixed slice and refuses to go past its end.
type sliceWriter struct {
	b []byte
	n int
}

func (w *sliceWriter) Write(p []byte) (int, error) {
	n := copy(w.b[w.n:], p)
	w.n += n
	if n < len(p) {
		return n, io.ErrShortWrite
	}
	return n, nil
}
