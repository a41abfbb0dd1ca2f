package feed

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrSocketInUse means another daemon is alive and listening on the socket.
var ErrSocketInUse = errors.New("socket is in use by a live daemon")

// DefaultSocket is where the daemon listens and the clients look when neither
// --socket nor $LOADERD_SOCKET says: $XDG_RUNTIME_DIR/loaderd/loaderd.sock, or
// /tmp/loaderd-<uid>/loaderd.sock without a runtime directory.
func DefaultSocket() string {
	if s := os.Getenv("LOADERD_SOCKET"); s != "" {
		return s
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "loaderd", "loaderd.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("loaderd-%d", os.Getuid()), "loaderd.sock")
}

// listen creates the Unix socket carefully: the directory is made with
// dirMode if missing; a socket file left by a dead daemon is removed, while a
// live daemon's is left alone and reported; the socket gets mode 0660. The
// listener removes the socket file when closed.
func listen(path string, dirMode os.FileMode) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o002 != 0 && st.Mode()&os.ModeSticky == 0 {
		return nil, fmt.Errorf("socket directory %s is world-writable; use a private directory", dir)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it or choose another --socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w (stop it first, or choose another --socket)", path, ErrSocketInUse)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%s: probing the existing socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}
