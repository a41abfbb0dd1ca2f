package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifications are what the daemon told "systemd".
type notifications struct {
	conn *net.UnixConn
}

// listenNotify plays systemd's side of sd_notify: a datagram socket named by
// $NOTIFY_SOCKET.
func listenNotify(t *testing.T) *notifications {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &notifications{conn: conn}
}

// next returns the next notification, failing the test after a while.
func (n *notifications) next(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := n.conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	k, err := n.conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:k])
}

// Under systemd (Type=notify, WatchdogSec) serve says READY=1 once its socket
// answers, pings the watchdog while healthy, and says STOPPING=1 on SIGTERM.
func TestServeNotifiesSystemd(t *testing.T) {
	n := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "200000") // pings every 100ms
	t.Setenv("WATCHDOG_PID", "")
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "loaderd.sock")
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	file := filepath.Join(dir, "loaderd.yaml")
	if err := os.WriteFile(file, []byte("socket: "+sock+"\ndata-root: "+dir+"\nlog-level: error\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() { done <- run(ctx, []string{"serve", "--config", file}, io.Discard, io.Discard) }()
	if got := n.next(t); !strings.HasPrefix(got, "READY=1\n") || !strings.Contains(got, "STATUS=serving on "+sock) {
		t.Fatalf("first notification %q", got)
	}
	// Ready means the socket answers; probes find it by --socket, or in the
	// daemon's config file.
	for _, args := range [][]string{{"health", "--socket", sock}, {"health", "--config", file}} {
		var out bytes.Buffer
		if err := run(t.Context(), args, &out, io.Discard); err != nil || out.String() != "SERVING\n" {
			t.Fatalf("%v once ready: %q, %v", args, out.String(), err)
		}
	}
	for range 3 {
		if got := n.next(t); got != "WATCHDOG=1" {
			t.Fatalf("watchdog ping %q", got)
		}
	}
	stop()
	for {
		got := n.next(t)
		if strings.HasPrefix(got, "STOPPING=1\n") {
			break
		}
		if got != "WATCHDOG=1" {
			t.Fatalf("while stopping: %q", got)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if err := run(t.Context(), []string{"health", "--socket", sock, "--timeout", "1s"}, io.Discard, io.Discard); err == nil {
		t.Fatal("health answers for a stopped daemon")
	}
}

// Without a service manager nothing is sent, and a bad configuration stops
// serve before it listens.
func TestServeRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "loaderd.yaml")
	if err := os.WriteFile(file, []byte("socket: "+dir+"/s.sock\ndata-root: ["+dir+"/missing]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"serve", "--config", file}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), file+":2: data-root "+dir+"/missing") {
		t.Fatalf("missing data root: %v", err)
	}
	if _, err := os.Stat(dir + "/s.sock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a socket was made for a bad configuration")
	}
}
