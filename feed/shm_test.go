package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/shard"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawSession drives the Stream RPC by hand, to hold batches without
// acknowledging them, ack out of order, or break the protocol.
type rawSession struct {
	t      *testing.T
	st     grpc.BidiStreamingClient[feedv1.StreamRequest, feedv1.StreamResponse]
	cancel context.CancelFunc
	hdr    *feedv1.StreamHeader
	ring   *shm.Mapping
	dec    *decoder
}

func openRaw(t *testing.T, c *Client, open *feedv1.OpenStream, claim bool) *rawSession {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.api.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawSession{t: t, st: st, cancel: cancel}
	t.Cleanup(r.close)
	if err := st.Send(&feedv1.StreamRequest{Kind: &feedv1.StreamRequest_Open{Open: open}}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r.hdr = m.GetHeader()
	r.dec = newDecoder(r.hdr.GetArrowSchema(), memory.DefaultAllocator)
	if claim {
		fd, err := shm.Claim(ctx, filepath.Join(filepath.Dir(c.socket), r.hdr.GetShm().GetSocketName()),
			r.hdr.GetSessionId(), r.hdr.GetShm().GetToken())
		if err != nil {
			t.Fatal(err)
		}
		r.ring, err = shm.Map(fd)
		_ = unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *rawSession) close() {
	r.cancel()
	if r.ring != nil {
		_ = r.ring.Close()
		r.ring = nil
	}
	r.dec.close()
}

func (r *rawSession) next() (*feedv1.Batch, error) {
	m, err := r.st.Recv()
	if err != nil {
		return nil, err
	}
	return m.GetBatch(), nil
}

// ack releases a batch. A send error means the stream is over, which the
// receiving side reports.
func (r *rawSession) ack(seq int64) {
	_ = r.st.Send(&feedv1.StreamRequest{Kind: &feedv1.StreamRequest_Ack{Ack: &feedv1.Ack{Seq: seq}}})
}

// ids decodes a batch, from the ring or inline, and returns its ids.
func (r *rawSession) ids(b *feedv1.Batch) []int64 {
	r.t.Helper()
	msg := b.GetArrowIpc()
	if s := b.GetShm(); s != nil {
		var err error
		if msg, err = r.ring.Slot(s.GetOffset(), s.GetLength()); err != nil {
			r.t.Fatal(err)
		}
	}
	rec, err := r.dec.decode(msg)
	if err != nil {
		r.t.Fatal(err)
	}
	defer rec.Release()
	return append([]int64(nil), rec.Column(0).(*array.Int64).Int64Values()...)
}

// checkBatch: unshuffled, batch seq of size n holds ids n*seq, n*seq+1, ...
func (r *rawSession) checkBatch(b *feedv1.Batch, n int64) {
	r.t.Helper()
	ids := r.ids(b)
	if int64(len(ids)) != n {
		r.t.Fatalf("batch %d: %d rows", b.GetSeq(), len(ids))
	}
	for i, id := range ids {
		if id != b.GetSeq()*n+int64(i) {
			r.t.Fatalf("batch %d row %d: id %d, want %d (overwritten?)", b.GetSeq(), i, id, b.GetSeq()*n+int64(i))
		}
	}
}

func openIDs(path string, batch int32) *feedv1.OpenStream {
	return &feedv1.OpenStream{Dataset: &feedv1.DatasetSpec{Format: "parquet", Uris: []string{path}},
		WorldSize: 1, BatchSize: batch, Transport: feedv1.Transport_TRANSPORT_SHM}
}

func sessionStatus(t *testing.T, c *Client, id string) SessionReport {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Sessions {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no session %s in %+v", id, st.Sessions)
	return SessionReport{}
}

// A client that keeps every batch: the daemon waits for room (back-pressure)
// and never writes over a batch the client holds; past its patience it
// sends the rest inline. An ack of any held batch makes room at once.
func TestShmHeldBatchesAreNeverOverwritten(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 20_000)
	const batch = 500 // 4 KB of ids: about 15 fit in a 64 KiB ring
	for _, spill := range []time.Duration{time.Minute, 100 * time.Millisecond} {
		t.Run(fmt.Sprint("spill after ", spill), func(t *testing.T) {
			srv := startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "d.sock"),
				ShmRingBytes: 64 << 10, ShmSpillAfter: spill}, dir)
			c, err := Dial(srv.Socket())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := openRaw(t, c, openIDs(path, batch), true)
			if r.hdr.GetTransport() != feedv1.Transport_TRANSPORT_SHM || r.ring.DataBytes != 64<<10 {
				t.Fatalf("header %v, ring %+v", r.hdr, r.ring.Header)
			}
			// Read without acknowledging until the daemon stops sending
			// (back-pressure) or sends inline (spill).
			var held []*feedv1.Batch
			got := make(chan *feedv1.Batch)
			ended := make(chan error, 1)
			go func() {
				defer close(got)
				for {
					b, err := r.next()
					if err != nil {
						ended <- err
						return
					}
					got <- b
				}
			}()
			recv := func(wait time.Duration) *feedv1.Batch {
				select {
				case b := <-got:
					return b
				case <-time.After(wait):
					return nil
				}
			}
			var spilled *feedv1.Batch // the first inline batch
			for b := recv(5 * time.Second); b != nil; b = recv(500 * time.Millisecond) {
				if b.GetShm() == nil {
					spilled = b
					break
				}
				held = append(held, b)
				if len(held) > 20 {
					t.Fatalf("%d batches in a ring that holds about 15", len(held))
				}
			}
			if (spilled != nil) != (spill < time.Minute) {
				t.Fatalf("spilled %v with patience %v", spilled, spill)
			}
			if len(held) < 10 {
				t.Fatalf("only %d batches through the ring", len(held))
			}
			st := sessionStatus(t, c, r.hdr.GetSessionId())
			if st.Transport != TransportShm || st.ShmSlotsHeld != len(held) || st.ShmWaitSeconds <= 0 {
				t.Fatalf("status while held: %+v (held %d)", st, len(held))
			}
			if spill == time.Minute && st.ShmInline != 0 {
				t.Fatalf("inline batches while waiting: %+v", st)
			}
			// Every held batch is intact, however many the daemon has
			// waited to write.
			for _, b := range held {
				r.checkBatch(b, batch)
			}
			// Release one out of order: the next batch goes to the ring.
			seen := int64(len(held))
			if spill == time.Minute {
				r.ack(held[3].GetSeq())
				b := recv(10 * time.Second)
				if b == nil || b.GetShm() == nil || b.GetSeq() != seen {
					t.Fatalf("after one release: %v", b)
				}
				r.checkBatch(b, batch)
				seen++
				held = append(held[:3], append(held[4:], b)...)
			}
			if spilled != nil {
				r.checkBatch(spilled, batch)
				seen++
			}
			// Keep holding: every batch still checks out. Then release
			// them all and read the rest.
			for _, b := range held {
				r.checkBatch(b, batch)
				r.ack(b.GetSeq())
			}
			for ; ; seen++ {
				b := recv(10 * time.Second)
				if b == nil {
					break
				}
				if b.GetSeq() != seen {
					t.Fatalf("batch %d, want %d", b.GetSeq(), seen)
				}
				r.checkBatch(b, batch)
				if b.GetShm() != nil {
					r.ack(b.GetSeq())
				}
			}
			if seen != 20_000/batch {
				t.Fatalf("%d batches", seen)
			}
			if err := <-ended; !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v", err)
			}
		})
	}
}

func TestShmOversizedBatchesGoInline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 30_000)
	srv := startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "d.sock"), ShmRingBytes: 64 << 10}, dir)
	c, _ := Dial(srv.Socket())
	defer c.Close()
	// 10,000 ids are 80 KB: larger than the ring.
	br, err := c.Stream(context.Background(), StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{path}},
		World: 1, BatchSize: 10_000, Transport: TransportShm})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	var next int64
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if b.Shm {
			t.Fatal("an 80 KB batch in a 64 KiB ring")
		}
		for _, id := range b.Record.Column(0).(*array.Int64).Int64Values() {
			if id != next {
				t.Fatalf("id %d, want %d", id, next)
			}
			next++
		}
		b.Record.Release()
	}
	if next != 30_000 || br.Transport != TransportShm {
		t.Fatalf("%d rows over %v", next, br.Transport)
	}
}

// Batches under the minimum go inline: for them a gRPC message is cheaper.
// A session whose first batch is small asks for shared memory in vain,
// unless the client insists.
func TestShmSmallBatchesGoInline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 5000)
	srv := startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "d.sock"), ShmMinBatchBytes: 16 << 10}, dir)
	c, _ := Dial(srv.Socket())
	defer c.Close()
	for _, tc := range []struct {
		batch   int
		asked   Transport
		used    Transport
		viaRing bool
	}{
		{1000, TransportAuto, TransportGRPC, false}, // 8 KB
		{1000, TransportShm, TransportShm, false},
		{4000, TransportAuto, TransportShm, true}, // 32 KB; the last 1000 rows go inline
	} {
		br, err := c.Stream(context.Background(), StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{path}},
			World: 1, BatchSize: tc.batch, Transport: tc.asked})
		if err != nil {
			t.Fatal(err)
		}
		if br.Transport != tc.used {
			t.Errorf("%+v: transport %v", tc, br.Transport)
		}
		var rows int64
		for {
			b, err := br.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.viaRing && b.Record.NumRows() == int64(tc.batch); b.Shm != want {
				t.Errorf("%+v: batch of %d rows through the ring: %v", tc, b.Record.NumRows(), b.Shm)
			}
			rows += b.Record.NumRows()
			b.Record.Release()
		}
		br.Close()
		if rows != 5000 {
			t.Fatalf("%+v: %d rows", tc, rows)
		}
	}
}

func TestShmOff(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 100)
	srv := startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "d.sock"), ShmRingBytes: -1}, dir)
	if _, err := os.Stat(srv.ShmSocket()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("hand-off socket with shared memory off: %v", err)
	}
	c, _ := Dial(srv.Socket())
	defer c.Close()
	req := StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{path}}, World: 1, BatchSize: 10}
	br, err := c.Stream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if br.Transport != TransportGRPC {
		t.Fatalf("auto chose %v", br.Transport)
	}
	br.Close()
	req.Transport = TransportShm
	_, err = c.Stream(context.Background(), req)
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "shared-memory transport") {
		t.Fatalf("shm asked of a daemon without it: %v", err)
	}
}

func TestShmProtocolErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 1000)
	srv := startServer(t, dir)
	c, _ := Dial(srv.Socket())
	defer c.Close()
	for name, req := range map[string]*feedv1.StreamRequest{
		"ack of a batch never sent": {Kind: &feedv1.StreamRequest_Ack{Ack: &feedv1.Ack{Seq: 999}}},
		"a second open":             {Kind: &feedv1.StreamRequest_Open{Open: openIDs(path, 10)}},
	} {
		r := openRaw(t, c, openIDs(path, 10), true)
		if err := r.st.Send(req); err != nil {
			t.Fatal(err)
		}
		var err error
		for err == nil {
			_, err = r.next()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// memfdMaps counts this process's mappings of loaderd rings.
func memfdMaps(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:loaderd-ring-")
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A client that goes away holding slots: the session ends and its ring is
// unmapped and closed (the daemon is this process here; the end-to-end
// tests kill -9 a real client of the real daemon).
func TestShmClientGoneFreesRing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 20_000)
	srv := startServer(t, dir)
	c, _ := Dial(srv.Socket())
	defer c.Close()
	if _, err := c.Version(context.Background()); err != nil { // the connection is part of the baseline
		t.Fatal(err)
	}
	fds, maps := openFDs(t), memfdMaps(t)
	r := openRaw(t, c, openIDs(path, 100), true)
	for range 3 {
		if _, err := r.next(); err != nil {
			t.Fatal(err)
		}
	}
	if memfdMaps(t) != maps+2 { // the daemon's mapping and the client's
		t.Fatalf("%d ring mappings, want %d", memfdMaps(t), maps+2)
	}
	r.close()
	deadline := time.Now().Add(10 * time.Second)
	for openFDs(t) != fds || memfdMaps(t) != maps {
		if time.Now().After(deadline) {
			t.Fatalf("after the client left: %d descriptors (was %d), %d ring mappings (was %d)",
				openFDs(t), fds, memfdMaps(t), maps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The ring goes only to the process that owns the session, whoever else
// has the token: another user's process, or another process of the same
// user. Positive control: the other user, allowed to use the daemon, gets a
// ring of its own session. Needs root to run a process as another user.
func TestShmRingGoesOnlyToItsOwner(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	dir, err := os.MkdirTemp("", "loaderd-shm-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ids.parquet")
	writeIDs(t, path, 1000)
	bin := helperBinary(t, dir)
	srv := startServerWith(t, Options{Socket: filepath.Join(dir, "run", "d.sock"), SocketDirMode: 0o755,
		AllowUIDs: []uint32{nobody}}, dir)
	for _, sock := range []string{srv.Socket(), srv.ShmSocket()} {
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := Dial(srv.Socket())
	defer c.Close()
	r := openRaw(t, c, openIDs(path, 100), false)
	claim := fmt.Sprintf("LOADERD_TEST_CLAIM=%s|%s|%x", srv.ShmSocket(), r.hdr.GetSessionId(), r.hdr.GetShm().GetToken())
	if out := runHelper(t, bin, nobody, claim); !strings.Contains(out, "does not own session") {
		t.Fatalf("another user's process with the token: %q", out)
	}
	if out := runHelper(t, bin, 0, claim); !strings.Contains(out, "does not own session") {
		t.Fatalf("another process of the same user with the token: %q", out)
	}
	// The refusals did not spend the token: the owner still gets the ring.
	fd, err := shm.Claim(context.Background(), srv.ShmSocket(), r.hdr.GetSessionId(), r.hdr.GetShm().GetToken())
	if err != nil {
		t.Fatalf("the owner was refused: %v", err)
	}
	_ = unix.Close(fd)
	// Positive control: the same helper, as the other user, gets its own.
	out := runHelper(t, bin, nobody, fmt.Sprintf("LOADERD_TEST_SHM_STREAM=%s|%s", srv.Socket(), path))
	if out != "ok 1000 rows, 10 batches through shared memory" {
		t.Fatalf("uid %d reading its own session: %q", nobody, out)
	}
}
