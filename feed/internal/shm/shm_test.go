package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// checkInvariants: extents lie in the area, aligned, sorted, disjoint, with
// distinct slot indices, and the bookkeeping adds up.
func checkInvariants(t *testing.T, a *allocator, slots int) {
	t.Helper()
	var used int64
	seen := map[int]bool{}
	for i, e := range a.live {
		if e.off < 0 || e.n <= 0 || e.off+e.n > a.size || e.off%a.align != 0 {
			t.Fatalf("extent %+v outside the area of %d", e, a.size)
		}
		if i > 0 && a.live[i-1].off+a.live[i-1].n > e.off {
			t.Fatalf("extents overlap: %+v %+v", a.live[i-1], e)
		}
		if seen[e.slot] || e.slot < 0 || e.slot >= slots {
			t.Fatalf("slot index %d reused or out of range", e.slot)
		}
		seen[e.slot] = true
		used += e.n
	}
	if used != a.used || len(a.live)+len(a.free) != slots {
		t.Fatalf("used %d (counted %d), %d live + %d free != %d slots", a.used, used, len(a.live), len(a.free), slots)
	}
}

func TestAllocatorIsARingInOrder(t *testing.T) {
	a := newAllocator(1000, 10, 8)
	var offs []int64
	for k := int64(0); k < 3; k++ {
		e, ok := a.alloc(k, 300)
		if !ok {
			t.Fatalf("alloc %d failed", k)
		}
		offs = append(offs, e.off)
	}
	if want := []int64{0, 300, 600}; fmt.Sprint(offs) != fmt.Sprint(want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
	if _, ok := a.alloc(3, 300); ok {
		t.Fatal("a fourth 300-byte batch fit in 1000 bytes")
	}
	// Released in order, the ring wraps to the start.
	a.release(0)
	e, ok := a.alloc(3, 250) // rounds to 250
	if !ok || e.off != 0 {
		t.Fatalf("after wrap: %+v %v", e, ok)
	}
	// Next goes after it, into the gap 250..300.
	if e, ok := a.alloc(4, 45); !ok || e.off != 250 {
		t.Fatalf("next fit: %+v %v", e, ok)
	}
	checkInvariants(t, a, 8)
}

func TestAllocatorReusesOutOfOrderReleases(t *testing.T) {
	// The client keeps batch 0 and releases the rest: the space of the
	// rest is reused, and batch 0 is never overwritten.
	a := newAllocator(1000, 1, 16)
	if _, ok := a.alloc(0, 200); !ok {
		t.Fatal()
	}
	for k := int64(1); k < 100; k++ {
		e, ok := a.alloc(k, 200)
		if !ok {
			t.Fatalf("batch %d found no room with only batch 0 held", k)
		}
		if e.off < 200 {
			t.Fatalf("batch %d placed at %d, over batch 0", k, e.off)
		}
		if k >= 4 {
			a.release(k - 3)
		}
		checkInvariants(t, a, 16)
	}
}

func TestAllocatorSlotsBound(t *testing.T) {
	a := newAllocator(1<<20, 64, 3)
	for k := int64(0); k < 3; k++ {
		if _, ok := a.alloc(k, 1); !ok {
			t.Fatal(k)
		}
	}
	if _, ok := a.alloc(3, 1); ok {
		t.Fatal("more batches than slots")
	}
	if _, ok := a.release(7); ok {
		t.Fatal("released an unknown key")
	}
	a.release(1)
	if e, ok := a.alloc(3, 1); !ok || e.slot != 1 {
		t.Fatalf("freed slot index not reused: %+v", e)
	}
	if a.fits(0) || a.fits(1<<20+1) || !a.fits(1<<20) {
		t.Fatal("fits")
	}
}

func TestAllocatorRandom(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		size := int64(64 * (1 + rng.IntN(200)))
		slots := 1 + rng.IntN(20)
		a := newAllocator(size, 64, slots)
		var held []int64
		for k := int64(0); k < 500; k++ {
			n := 1 + rng.Int64N(size/2)
			if _, ok := a.alloc(k, n); ok {
				held = append(held, k)
			} else if len(held) == 0 {
				t.Fatalf("seed %d: %d bytes did not fit in an empty area of %d", seed, n, size)
			}
			// Release a random held batch, sometimes the oldest.
			for len(held) > 0 && rng.IntN(3) > 0 {
				i := 0
				if rng.IntN(2) == 0 {
					i = rng.IntN(len(held))
				}
				if _, ok := a.release(held[i]); !ok {
					t.Fatalf("seed %d: held %d not found", seed, held[i])
				}
				held = append(held[:i], held[i+1:]...)
			}
			checkInvariants(t, a, slots)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Version: Version, Size: HeaderSize + 8192, DataOffset: HeaderSize, DataBytes: 8192, Slots: 5, Align: Align}
	b := make([]byte, h.Size)
	h.put(b)
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("%+v %v", got, err)
	}
	for name, mutate := range map[string]func([]byte){
		"magic":   func(b []byte) { b[0] = 'X' },
		"version": func(b []byte) { b[8] = 9 },
		"size":    func(b []byte) { b[16]++ },
		"slots":   func(b []byte) { copy(b[40:44], []byte{0, 0, 0, 0}) },
	} {
		c := bytes.Clone(b)
		mutate(c)
		if _, err := ParseHeader(c); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParseHeader(b[:HeaderSize]); !errors.Is(err, ErrBadHeader) {
		t.Errorf("short mapping: %v", err)
	}
}

func newRing(t *testing.T, data int64, slots int) *Ring {
	t.Helper()
	r, err := NewRing("loaderd-test", data, slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestRingIsSealedAndReadOnlyForOthers(t *testing.T) {
	r := newRing(t, 1<<16, 4)
	fd, err := r.Dup()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(fd) }()
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals != ringSeals {
		t.Fatalf("seals %#x, want %#x (%v)", seals, ringSeals, err)
	}
	size := int(r.Header().Size)
	if _, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EPERM) {
		t.Errorf("a new writable mapping: %v", err)
	}
	if _, err := unix.Pwrite(fd, []byte("x"), HeaderSize); !errors.Is(err, unix.EPERM) {
		t.Errorf("write(2): %v", err)
	}
	if err := unix.Ftruncate(fd, int64(size/2)); !errors.Is(err, unix.EPERM) {
		t.Errorf("shrinking: %v", err)
	}
	if err := unix.Ftruncate(fd, int64(size*2)); !errors.Is(err, unix.EPERM) {
		t.Errorf("growing: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("changing the seals: %v", err)
	}
	// A read-only mapping sees what the daemon writes, and cannot be made
	// writable.
	m, err := Map(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.Close() }()
	if err := unix.Mprotect(m.mem, unix.PROT_READ|unix.PROT_WRITE); !errors.Is(err, unix.EACCES) {
		t.Errorf("mprotect to writable: %v", err)
	}
	s, err := r.Alloc(context.Background(), 0, 5, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Fill(s, func(w io.Writer) error { _, err := w.Write([]byte("hello")); return err }); err != nil {
		t.Fatal(err)
	}
	got, err := m.Slot(s.Offset, s.Len)
	if err != nil || string(got) != "hello" {
		t.Fatalf("client sees %q, %v", got, err)
	}
	if _, err := m.Slot(0, 8); err == nil {
		t.Error("a slot over the header was accepted")
	}
	if _, err := m.Slot(s.Offset, m.Size); err == nil {
		t.Error("a slot past the end was accepted")
	}
	if m.Header != r.Header() {
		t.Errorf("client header %+v, daemon %+v", m.Header, r.Header())
	}
}

func TestRingFillMustBeExact(t *testing.T) {
	r := newRing(t, 1<<16, 4)
	s, _ := r.Alloc(context.Background(), 0, 8, time.Second)
	if err := r.Fill(s, func(w io.Writer) error { _, err := w.Write(make([]byte, 9)); return err }); !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("overlong write: %v", err)
	}
	if err := r.Fill(s, func(w io.Writer) error { _, err := w.Write(make([]byte, 7)); return err }); err == nil {
		t.Error("short write accepted")
	}
}

func TestRingBackPressure(t *testing.T) {
	r := newRing(t, 4096, 8) // four slots of 1 KiB
	ctx := context.Background()
	for k := int64(0); k < 4; k++ {
		if _, err := r.Alloc(ctx, k, 1024, time.Second); err != nil {
			t.Fatal(k, err)
		}
	}
	if st := r.Stats(); st.SlotsHeld != 4 || st.BytesHeld != 4096 {
		t.Fatalf("stats %+v", st)
	}
	// The writer waits for a release...
	got := make(chan error, 1)
	go func() {
		_, err := r.Alloc(ctx, 4, 1024, time.Minute)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("allocated in a full ring: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := r.Release(2); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if r.Stats().Waited < 50*time.Millisecond {
		t.Errorf("waited %v", r.Stats().Waited)
	}
	// ...up to its patience; then batches spill at once until a release.
	if _, err := r.Alloc(ctx, 5, 1024, 20*time.Millisecond); !errors.Is(err, ErrFull) {
		t.Fatalf("full ring: %v", err)
	}
	t0 := time.Now()
	if _, err := r.Alloc(ctx, 5, 1024, time.Minute); !errors.Is(err, ErrFull) || time.Since(t0) > 10*time.Second {
		t.Fatalf("stalled ring waited again: %v after %v", err, time.Since(t0))
	}
	if err := r.Release(0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Alloc(ctx, 5, 1024, time.Minute); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if err := r.Release(0); !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("double release: %v", err)
	}
	// Cancellation ends a wait with the cause.
	cctx, cancel := context.WithCancelCause(ctx)
	cause := errors.New("client went away")
	time.AfterFunc(10*time.Millisecond, func() { cancel(cause) })
	if _, err := r.Alloc(cctx, 6, 1024, time.Minute); !errors.Is(err, cause) {
		t.Fatalf("canceled wait: %v", err)
	}
	if _, err := r.Alloc(ctx, 6, 4097, time.Minute); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	// Close wakes nobody up wrongly and later calls are harmless.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Release(1); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Alloc(ctx, 7, 1, time.Minute); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if _, err := r.Dup(); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
}

// fdCount is the number of descriptors this process has open.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func startHandoff(t *testing.T, offers map[string]*Offer) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "h.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	h := NewHandoff(l, func(s string) *Offer { mu.Lock(); defer mu.Unlock(); return offers[s] }, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return path
}

func TestHandoff(t *testing.T) {
	before := fdCount(t)
	r := newRing(t, 1<<16, 4)
	token, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	me := int32(os.Getpid())
	uid := uint32(os.Getuid())
	fails := make(chan error, 1)
	failed := func(err error) { fails <- err }
	offers := map[string]*Offer{
		"s1":       NewOffer(r, token, me, uid, failed),
		"other":    NewOffer(r, token, me+1, uid, failed),
		"otheruid": NewOffer(r, token, me, uid+1, failed),
	}
	claimed := func(o *Offer) bool {
		select {
		case <-o.Claimed():
			return true
		default:
			return false
		}
	}
	path := startHandoff(t, offers)
	ctx := context.Background()

	refused := func(session string, tok []byte, want string) {
		t.Helper()
		fd, err := Claim(ctx, path, session, tok)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Errorf("claim %s: fd %d, %v; want refusal %q", session, fd, err, want)
		}
	}
	wrong := append([]byte(nil), token...)
	wrong[0] ^= 1
	refused("s1", wrong, "wrong token")
	refused("s1", token[:8], "wrong token")
	refused("nope", token, "no session")
	refused("other", token, "does not own")
	refused("otheruid", token, "does not own")
	for _, o := range offers {
		if claimed(o) {
			t.Fatal("a refused claim spent the token")
		}
	}

	fd, acks, err := ClaimWithAcks(ctx, path, "s1", token)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Map(fd)
	_ = unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header != r.Header() || !claimed(offers["s1"]) {
		t.Fatalf("mapped %+v", m.Header)
	}
	_ = m.Close()
	refused("s1", token, "already claimed")

	// Acknowledgements on the claim's connection release slots; one for a
	// batch the ring does not hold is reported.
	for k := int64(0); k < 3; k++ {
		if _, err := r.Alloc(ctx, k, 100, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []int64{2, 0} {
		if err := acks.Ack(k); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Stats().SlotsHeld != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after 2 acks of 3: %+v", r.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if err := acks.Ack(7); err != nil {
		t.Fatal(err)
	}
	if err := <-fails; !errors.Is(err, ErrUnknownSlot) {
		t.Fatalf("ack of an unknown batch: %v", err)
	}
	// Withdrawing the offer closes the channel.
	offers["s1"].Close()
	_ = acks.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := acks.c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("channel after the offer was withdrawn: %v", err)
	}
	_ = acks.Close()

	// Malformed requests get an answer and nothing else.
	for _, req := range []string{"hello\n", "claim s1\n", "claim s1 zz\n", strings.Repeat("x", 600)} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte(req))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(b), "error ") {
			t.Errorf("request %.20q: answer %q", req, b)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// +1: the listener, closed at cleanup. The daemon's side of the last
	// exchange may close just after the client has read its answer.
	deadline = time.Now().Add(10 * time.Second)
	for fdCount(t) > before+1 {
		if time.Now().After(deadline) {
			t.Fatalf("descriptors: %d before, %d after", before, fdCount(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
