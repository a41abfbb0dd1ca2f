package feed

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/tests/corpora"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	// Helper modes, run as another user or process (see TestPeerCredentials
	// and TestShmRingGoesOnlyToItsOwner).
	if sock := os.Getenv("LOADERD_TEST_DIAL"); sock != "" {
		c, err := Dial(sock)
		if err == nil {
			_, err = c.Version(context.Background())
			c.Close()
		}
		fmt.Print(err)
		os.Exit(0)
	}
	if req := os.Getenv("LOADERD_TEST_CLAIM"); req != "" {
		fmt.Print(helperClaim(req))
		os.Exit(0)
	}
	if req := os.Getenv("LOADERD_TEST_SHM_STREAM"); req != "" {
		fmt.Print(helperShmStream(req))
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// helperClaim claims a ring: "hand-off socket|session|token hex".
func helperClaim(req string) string {
	f := strings.Split(req, "|")
	token, _ := hex.DecodeString(f[2])
	fd, err := shm.Claim(context.Background(), f[0], f[1], token)
	if err != nil {
		return err.Error()
	}
	_ = unix.Close(fd)
	return "claimed"
}

// helperShmStream reads a whole dataset over shared memory: "socket|glob".
func helperShmStream(req string) string {
	f := strings.Split(req, "|")
	c, err := Dial(f[0])
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	br, err := c.Stream(context.Background(), StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{f[1]}},
		World: 1, BatchSize: 100, Transport: TransportShm})
	if err != nil {
		return err.Error()
	}
	defer br.Close()
	rows, viaShm := 0, 0
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Sprintf("ok %d rows, %d batches through shared memory", rows, viaShm)
		}
		if err != nil {
			return err.Error()
		}
		rows += int(b.Record.NumRows())
		if b.Shm {
			viaShm++
		}
		b.Record.Release()
	}
}

// startServer serves dir on a socket in a fresh directory until the test ends.
func startServer(t *testing.T, roots ...string) *Server {
	t.Helper()
	return startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "run", "d.sock")}, roots...)
}

// startServerWith serves roots with opts; unless opts say otherwise,
// batches of any size go through shared memory.
func startServerWith(t *testing.T, opts Options, roots ...string) *Server {
	t.Helper()
	if opts.ShmMinBatchBytes == 0 {
		opts.ShmMinBatchBytes = -1
	}
	store, err := shard.NewLocalStore(roots)
	if err != nil {
		t.Fatal(err)
	}
	return startServerDeps(t, opts, Deps{Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(2)})
}

func startServerDeps(t *testing.T, opts Options, deps Deps) *Server {
	t.Helper()
	srv, err := NewServer(opts, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- srv.Serve(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		for _, sock := range []string{srv.Socket(), srv.ShmSocket()} {
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket %s left behind: %v", sock, err)
			}
		}
	})
	return srv
}

func writeIDs(t testing.TB, path string, n int64) {
	t.Helper()
	sc := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)
	b := array.NewInt64Builder(memory.DefaultAllocator)
	for i := int64(0); i < n; i++ {
		b.Append(i)
	}
	a := b.NewArray()
	rec := array.NewRecordBatch(sc, []arrow.Array{a}, n)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pqarrow.NewFileWriter(sc, f, parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(100)), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rec.Release()
	a.Release()
	b.Release()
}

func TestStreamOverSocket(t *testing.T) {
	dir := t.TempDir()
	writeIDs(t, filepath.Join(dir, "a.parquet"), 1000)
	srv := startServer(t, dir)
	c, err := Dial(srv.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	spec := shard.Spec{Format: "parquet", URIs: []string{filepath.Join(dir, "*.parquet")}, Shuffle: &shard.Shuffle{Seed: 5}}
	info, err := c.Describe(ctx, spec)
	if err != nil || info.Rows != 1000 || info.Blocks != 10 || info.Schema.Field(0).Name != "id" {
		t.Fatalf("describe: %+v, %v", info, err)
	}
	for _, tr := range []Transport{TransportAuto, TransportGRPC, TransportShm} {
		seen := map[int64]int{}
		for r := 0; r < 3; r++ {
			br, err := c.Stream(ctx, StreamRequest{Spec: spec, Rank: r, World: 3, Mode: shard.Exact, BatchSize: 64, Transport: tr})
			if err != nil {
				t.Fatal(err)
			}
			wantShm := tr != TransportGRPC
			if got := br.Transport == TransportShm; got != wantShm {
				t.Fatalf("%v: stream transport %v", tr, br.Transport)
			}
			for {
				b, err := br.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if b.Shm != wantShm {
					t.Fatalf("%v: batch %d through shm: %v", tr, b.Seq, b.Shm)
				}
				for _, id := range b.Record.Column(0).(*array.Int64).Int64Values() {
					seen[id]++
				}
				b.Record.Release()
			}
			br.Close()
		}
		if len(seen) != 1000 {
			t.Fatalf("%v: %d distinct ids", tr, len(seen))
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("%v: id %d seen %d times", tr, id, n)
			}
		}
	}
}

func TestErrorsCarryCodeAndPlace(t *testing.T) {
	root := corpora.Path(t, "parquet")
	srv := startServer(t, root)
	c, _ := Dial(srv.Socket())
	defer c.Close()
	ctx := context.Background()
	bad := filepath.Join(root, "bad_data", "ARROW-GH-41317.parquet")
	br, err := c.Stream(ctx, StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{bad}}, World: 1, BatchSize: 10})
	if err == nil {
		for err == nil {
			var b *ClientBatch
			if b, err = br.Next(); err == nil {
				b.Record.Release()
			}
		}
		br.Close()
	}
	st := status.Convert(err)
	if st.Code() != codes.DataLoss {
		t.Fatalf("code %v: %v", st.Code(), err)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.Metadata["file"] != bad || !strings.Contains(info.Metadata["where"], "row group") {
		t.Fatalf("details: %+v", st.Details())
	}
	cases := map[string]codes.Code{
		filepath.Join(root, "nothing-*.parquet"): codes.NotFound,
		"/etc/passwd":                            codes.PermissionDenied,
		filepath.Join(root, "encrypted", "uniform_encryption.parquet.encrypted"): codes.DataLoss,
	}
	for uri, want := range cases {
		_, err := c.Describe(ctx, shard.Spec{Format: "parquet", URIs: []string{uri}})
		if status.Code(err) != want {
			t.Errorf("%s: got %v, want %v", uri, err, want)
		}
	}
	// Requests the validator refuses.
	_, err = c.Describe(ctx, shard.Spec{Format: "parquet"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty uris: %v", err)
	}
	_, err = c.Stream(ctx, StreamRequest{Spec: shard.Spec{Format: "parquet", URIs: []string{bad}}, Rank: 2, World: 2, BatchSize: 1})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "rank 2") {
		t.Errorf("rank out of range: %v", err)
	}
}

func TestSocketLifecycle(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	// A live daemon's socket is not taken over.
	if _, err := listen(srv.Socket(), 0o700); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("live socket: %v", err)
	}
	// A stale one (bound, nobody listening) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := listen(stale, 0o700)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	st, _ := os.Stat(stale)
	if st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v", st.Mode().Perm())
	}
	l2.Close()
	// A regular file is never removed.
	plain := filepath.Join(dir, "file")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listen(plain, 0o700); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
}

// A user the daemon does not allow is refused at the handshake, even when
// the file permissions would let it connect. Needs root to run as another uid.
func TestPeerCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	// Everything in a directory the other user can reach: only the
	// credentials check stands in its way.
	dir, err := os.MkdirTemp("", "loaderd-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := helperBinary(t, dir)
	dialAsNobody := func(sock string) string {
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		return runHelper(t, bin, nobody, "LOADERD_TEST_DIAL="+sock)
	}
	refusing := startServerWith(t, Options{Socket: filepath.Join(dir, "a", "d.sock"), SocketDirMode: 0o755}, dir)
	// Refused at the handshake, the client sees the connection close.
	if out := dialAsNobody(refusing.Socket()); !strings.Contains(out, "code = Unavailable") {
		t.Fatalf("a uid 65534 process was not refused: %q", out)
	}
	allowing := startServerWith(t, Options{Socket: filepath.Join(dir, "b", "d.sock"), SocketDirMode: 0o755,
		AllowUIDs: []uint32{65534}}, dir)
	if out := dialAsNobody(allowing.Socket()); out != "<nil>" {
		t.Fatalf("an allowed uid 65534 process was refused: %q", out)
	}
}

// nobody is the uid and gid helper processes run as to be another user.
const nobody = 65534

// helperBinary copies this test binary into dir, where other users can run it.
func helperBinary(t *testing.T, dir string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runHelper runs the helper binary as uid (and the same gid) with env added,
// and returns what it printed.
func runHelper(t *testing.T, bin string, uid uint32, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	if uid != uint32(os.Getuid()) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	return string(out)
}

func TestPeerCredsRules(t *testing.T) {
	pc := newPeerCreds([]uint32{1234}, []uint32{77})
	for _, tc := range []struct {
		uid, gid uint32
		ok       bool
	}{{uint32(os.Getuid()), 5, true}, {0, 5, true}, {1234, 5, true}, {999, 77, true}, {999, 5, false}} {
		cred := &unix.Ucred{Pid: int32(os.Getpid() + 1_000_000), Uid: tc.uid, Gid: tc.gid}
		if got := pc.allowed(cred); got != tc.ok {
			t.Errorf("uid %d gid %d: allowed=%v", tc.uid, tc.gid, got)
		}
	}
}
