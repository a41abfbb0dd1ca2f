package shm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrRefused means the daemon would not hand over a ring.
var ErrRefused = errors.New("shm: ring refused")

// Claim asks the hand-off socket at path for a session's ring and returns
// its descriptor, which the caller closes.
func Claim(ctx context.Context, path, session string, token []byte) (int, error) {
	fd, acks, err := ClaimWithAcks(ctx, path, session, token)
	if err == nil {
		_ = acks.Close()
	}
	return fd, err
}

// Acks is a session's acknowledgement channel, kept from its claim.
type Acks struct{ c *net.UnixConn }

// Ack releases batch seq's slot.
func (a *Acks) Ack(seq int64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seq))
	_, err := a.c.Write(b[:])
	return err
}

// Close closes the channel.
func (a *Acks) Close() error { return a.c.Close() }

// ClaimWithAcks is Claim that keeps the connection as the session's
// acknowledgement channel; the caller closes both.
func ClaimWithAcks(ctx context.Context, path, session string, token []byte) (fd int, acks *Acks, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return -1, nil, fmt.Errorf("shm: hand-off socket: %w", err)
	}
	c := conn.(*net.UnixConn)
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	fd, err = claimOn(ctx, c, session, token)
	if err != nil {
		return -1, nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return fd, &Acks{c: c}, nil
}

func claimOn(ctx context.Context, c *net.UnixConn, session string, token []byte) (int, error) {
	deadline := time.Now().Add(exchangeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(c, "claim %s %x\n", session, token); err != nil {
		return -1, fmt.Errorf("shm: sending the claim: %w", err)
	}
	var fds []int
	closeFDs := func() {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
	}
	buf := make([]byte, 0, maxRequest)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for !strings.Contains(string(buf), "\n") {
		if len(buf) == cap(buf) {
			closeFDs()
			return -1, errors.New("shm: answer too long")
		}
		n, oobn, _, _, err := c.ReadMsgUnix(buf[len(buf):cap(buf)], oob)
		buf = buf[:len(buf)+n]
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				closeFDs()
				return -1, perr
			}
		}
		if err != nil {
			closeFDs()
			return -1, fmt.Errorf("shm: reading the answer: %w", err)
		}
	}
	line, _, _ := strings.Cut(string(buf), "\n")
	if reason, ok := strings.CutPrefix(line, "error "); ok {
		closeFDs()
		return -1, fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	if !strings.HasPrefix(line, "ok ") || len(fds) != 1 {
		closeFDs()
		return -1, fmt.Errorf("shm: unexpected answer %q with %d descriptors", line, len(fds))
	}
	return fds[0], nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("shm: control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("shm: control message: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// Mapping is a client's read-only view of a ring.
type Mapping struct {
	mem []byte
	Header
}

// Map maps the ring behind fd read-only and checks its header; fd may be
// closed afterwards. The ring must be sealed against shrinking, so that the
// mapping can never be cut short under a reader.
func Map(fd int) (*Mapping, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("shm: reading the ring's seals: %w", err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w: the ring is not sealed against shrinking", ErrBadHeader)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: fstat: %w", err)
	}
	if st.Size < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadHeader, st.Size)
	}
	// Not MAP_POPULATE: read faults on a memfd allocate its untouched pages.
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: mapping the ring: %w", err)
	}
	h, err := ParseHeader(mem)
	if err != nil {
		_ = unix.Munmap(mem)
		return nil, err
	}
	return &Mapping{mem: mem, Header: h}, nil
}

// Slot returns the n bytes at off, which must lie in the data area.
func (m *Mapping) Slot(off, n int64) ([]byte, error) {
	if off < m.DataOffset || n < 0 || off > m.Size || n > m.Size-off {
		return nil, fmt.Errorf("shm: slot [%d, +%d) is outside the ring's data [%d, %d)", off, n, m.DataOffset, m.Size)
	}
	return m.mem[off : off+n : off+n], nil
}

// Close unmaps the ring; slices from Slot must not be used after.
func (m *Mapping) Close() error { return unix.Munmap(m.mem) }
