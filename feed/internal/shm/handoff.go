package shm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The hand-off protocol, one claim per connection, text lines:
//
//	client: "claim <session id> <token, hex>\n"
//	daemon: "ok <memfd bytes>\n" with the memfd attached (SCM_RIGHTS),
//	        or "error <reason>\n"
//
// After "ok" the connection stays open as the session's acknowledgement
// channel: the client writes the sequence number of each batch it releases
// as 8 bytes, little-endian. A release is one write(2) from whichever thread
// drops the batch; the same acknowledgement over the gRPC stream costs the
// Python client several thread hand-offs per message and caps it at a few
// thousand a second. The daemon closes the channel when the session ends.
const (
	maxRequest      = 512
	exchangeTimeout = 5 * time.Second
	// maxExchanges bounds the connections served at once.
	maxExchanges = 16
	// TokenBytes is the length of a claim token.
	TokenBytes = 32
)

// Offer is a ring waiting for its session's client. It is given once, to
// the first connection that presents Token from process PID of user UID:
// the credentials of the session's own gRPC connection.
type Offer struct {
	Ring    *Ring
	Token   []byte
	PID     int32
	UID     uint32
	fail    func(error)
	claimed atomic.Bool
	done    chan struct{}

	mu     sync.Mutex
	acks   *net.UnixConn // the acknowledgement channel, once claimed
	closed bool
}

// NewOffer offers ring to process pid of user uid, for token. fail is
// called if the client acknowledges a batch the ring does not hold.
func NewOffer(ring *Ring, token []byte, pid int32, uid uint32, fail func(error)) *Offer {
	return &Offer{Ring: ring, Token: token, PID: pid, UID: uid, fail: fail, done: make(chan struct{})}
}

// Claimed is closed once the ring has been handed over.
func (o *Offer) Claimed() <-chan struct{} { return o.done }

// Close withdraws the offer at the end of its session: the acknowledgement
// channel is closed, which ends its reader.
func (o *Offer) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.acks != nil {
		_ = o.acks.Close()
	}
}

// attach makes c the offer's acknowledgement channel; false if the offer was
// withdrawn meanwhile.
func (o *Offer) attach(c *net.UnixConn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.acks = c
	return true
}

// NewToken returns a fresh random claim token.
func NewToken() ([]byte, error) {
	t := make([]byte, TokenBytes)
	if _, err := rand.Read(t); err != nil {
		return nil, fmt.Errorf("shm: token: %w", err)
	}
	return t, nil
}

// Handoff serves ring descriptors on a Unix socket.
type Handoff struct {
	l      *net.UnixListener
	lookup func(session string) *Offer
	log    *slog.Logger
}

// NewHandoff serves the offers lookup finds on l; Serve starts it.
func NewHandoff(l *net.UnixListener, lookup func(session string) *Offer, log *slog.Logger) *Handoff {
	return &Handoff{l: l, lookup: lookup, log: log}
}

// Serve answers claims until ctx is done, then closes the listener and
// waits for the exchanges in progress.
func (h *Handoff) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { h.l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxExchanges)
	for {
		c, err := h.l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Out of descriptors, say: the daemon goes on, claims wait.
			h.log.Warn("shm hand-off: accept failed", "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			_ = c.Close()
			return
		}
		wg.Go(func() { h.exchange(ctx, c, func() { <-sem }) })
	}
}

// exchange answers one claim, then serves the acknowledgement channel until
// the client or the session closes it. done is called once the claim is
// answered: only claims count against maxExchanges.
func (h *Handoff) exchange(ctx context.Context, c *net.UnixConn, done func()) {
	defer func() { _ = c.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	o, err := h.answer(c)
	done()
	if err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})
	if o.attach(c) {
		serveAcks(c, o)
	}
}

func (h *Handoff) answer(c *net.UnixConn) (*Offer, error) {
	_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
	fd, o, err := h.claim(c)
	if err != nil {
		h.log.Warn("shm ring refused", "err", err)
		_, _ = c.Write([]byte("error " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"))
		return nil, err
	}
	defer func() { _ = unix.Close(fd) }()
	if _, _, err := c.WriteMsgUnix(fmt.Appendf(nil, "ok %d\n", o.Ring.Header().Size), unix.UnixRights(fd), nil); err != nil {
		h.log.Warn("shm hand-off: sending the ring", "err", err)
		return nil, err
	}
	return o, nil
}

// serveAcks releases the slots the client acknowledges on c.
func serveAcks(c *net.UnixConn, o *Offer) {
	buf := make([]byte, 8*512)
	have := 0
	for {
		n, err := c.Read(buf[have:])
		have += n
		whole := have / 8 * 8
		for i := 0; i < whole; i += 8 {
			seq := int64(binary.LittleEndian.Uint64(buf[i:]))
			if rerr := o.Ring.Release(seq); rerr != nil {
				o.fail(fmt.Errorf("acknowledged batch %d, which is not in shared memory: %w", seq, rerr))
				return
			}
		}
		have = copy(buf, buf[whole:have])
		if err != nil {
			return
		}
	}
}

// claim checks a request and returns a new descriptor of the ring it may
// have. The token is spent only by a request that passes every check, so a
// process that may not have the ring cannot use it up.
func (h *Handoff) claim(c *net.UnixConn) (int, *Offer, error) {
	line, err := readLine(c)
	if err != nil {
		return -1, nil, err
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "claim" {
		return -1, nil, fmt.Errorf("malformed request %q", line)
	}
	session := f[1]
	token, err := hex.DecodeString(f[2])
	if err != nil {
		return -1, nil, errors.New("malformed token")
	}
	cred, err := PeerCred(c)
	if err != nil {
		return -1, nil, err
	}
	o := h.lookup(session)
	if o == nil {
		return -1, nil, fmt.Errorf("no session %q has a ring to claim", session)
	}
	if cred.Uid != o.UID || cred.Pid != o.PID {
		return -1, nil, fmt.Errorf("process %d of uid %d does not own session %s", cred.Pid, cred.Uid, session)
	}
	if subtle.ConstantTimeCompare(token, o.Token) != 1 {
		return -1, nil, fmt.Errorf("wrong token for session %s", session)
	}
	if !o.claimed.CompareAndSwap(false, true) {
		return -1, nil, fmt.Errorf("the ring of session %s was already claimed", session)
	}
	defer close(o.done)
	fd, err := o.Ring.Dup()
	if err != nil {
		return -1, nil, err
	}
	return fd, o, nil
}

func readLine(c net.Conn) (string, error) {
	buf := make([]byte, 0, maxRequest)
	for len(buf) < maxRequest {
		n, err := c.Read(buf[len(buf):maxRequest])
		buf = buf[:len(buf)+n]
		if i := strings.IndexByte(string(buf), '\n'); i >= 0 {
			return string(buf[:i]), nil
		}
		if err != nil {
			return "", fmt.Errorf("reading the request: %w", err)
		}
	}
	return "", fmt.Errorf("request longer than %d bytes", maxRequest)
}

// PeerCred returns the credentials of the process at the other end of c.
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return cred, nil
}
