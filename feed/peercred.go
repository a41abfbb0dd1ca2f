package feed

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/loaderd/loaderd/feed/internal/shm"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerInfo is the AuthInfo of a connection: the peer's process credentials,
// read from the socket (SO_PEERCRED) when it connected.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID      int32
	UID, GID uint32
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// peerCreds admits a connection only from an allowed user: the daemon's own
// uid, root, a listed uid, or a member (primary or supplementary) of a listed
// group. Others are refused at the handshake, before any request is read.
type peerCreds struct {
	uids map[uint32]bool
	gids map[uint32]bool
}

func newPeerCreds(uids, gids []uint32) *peerCreds {
	c := &peerCreds{uids: map[uint32]bool{uint32(os.Getuid()): true, 0: true}, gids: map[uint32]bool{}}
	for _, u := range uids {
		c.uids[u] = true
	}
	for _, g := range gids {
		c.gids[g] = true
	}
	return c
}

func (c *peerCreds) allowed(cred *unix.Ucred) bool {
	if c.uids[cred.Uid] || c.gids[cred.Gid] {
		return true
	}
	if len(c.gids) == 0 {
		return false
	}
	for _, g := range supplementaryGroups(cred.Pid) {
		if c.gids[g] {
			return true
		}
	}
	return false
}

// supplementaryGroups reads a process's groups from /proc (SO_PEERCRED gives
// only the primary group).
func supplementaryGroups(pid int32) []uint32 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var gs []uint32
			for _, field := range strings.Fields(rest) {
				if g, err := strconv.ParseUint(field, 10, 32); err == nil {
					gs = append(gs, uint32(g))
				}
			}
			return gs
		}
	}
	return nil
}

func ucred(conn net.Conn) (*unix.Ucred, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("peercred: %T is not a Unix socket", conn)
	}
	return shm.PeerCred(uc)
}

// ServerHandshake implements credentials.TransportCredentials.
func (c *peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cred, err := ucred(conn)
	if err != nil {
		return nil, nil, err
	}
	if !c.allowed(cred) {
		return nil, nil, fmt.Errorf("peercred: uid %d gid %d (pid %d) is not allowed to use this daemon (see --allow-uid, --allow-gid)",
			cred.Uid, cred.Gid, cred.Pid)
	}
	return conn, PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
	}, nil
}

// ClientHandshake implements credentials.TransportCredentials; the daemon
// never dials.
func (c *peerCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, PeerInfo{}, nil
}

// Info implements credentials.TransportCredentials.
func (c *peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

// Clone implements credentials.TransportCredentials.
func (c *peerCreds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName implements credentials.TransportCredentials.
func (c *peerCreds) OverrideServerName(string) error { return nil }
