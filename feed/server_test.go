package feed

import (
	"context"
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
	// Helper mode: dial a socket as another user (see TestPeerCredentials).
	if sock := os.Getenv("LOADERD_TEST_DIAL"); sock != "" {
		c, err := Dial(sock)
		if err == nil {
			_, err = c.Version(context.Background())
			c.Close()
		}
		fmt.Print(err)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// startServer serves dir on a socket in a fresh directory until the test ends.
func startServer(t *testing.T, roots ...string) *Server {
	t.Helper()
	return startServerWith(t, Options{Socket: filepath.Join(t.TempDir(), "run", "d.sock")}, roots...)
}

func startServerWith(t *testing.T, opts Options, roots ...string) *Server {
	t.Helper()
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
		if _, err := os.Stat(srv.Socket()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
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
	seen := map[int64]int{}
	for r := 0; r < 3; r++ {
		br, err := c.Stream(ctx, StreamRequest{Spec: spec, Rank: r, World: 3, Mode: shard.Exact, BatchSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		for {
			b, err := br.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range b.Record.Column(0).(*array.Int64).Int64Values() {
				seen[id]++
			}
			b.Record.Release()
		}
		br.Close()
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct ids", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("id %d seen %d times", id, n)
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
	dialAsNobody := func(sock string) string {
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), "LOADERD_TEST_DIAL="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper: %v", err)
		}
		return string(out)
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
