package feed

import "fmt"

// Transport is how a session's batches reach the client.
type Transport int

const (
	// TransportAuto lets the daemon choose: shared memory when it offers it
	// (client and daemon share the host, as they do over a Unix socket),
	// else gRPC.
	TransportAuto Transport = iota
	// TransportGRPC sends every batch inside a gRPC message.
	TransportGRPC
	// TransportShm writes batches into a shared-memory ring the client maps;
	// gRPC messages carry only where each batch lies.
	TransportShm
)

func (t Transport) String() string {
	switch t {
	case TransportGRPC:
		return "grpc"
	case TransportShm:
		return "shm"
	}
	return "auto"
}

// ParseTransport reads "auto", "grpc" or "shm".
func ParseTransport(s string) (Transport, error) {
	for _, t := range []Transport{TransportAuto, TransportGRPC, TransportShm} {
		if s == t.String() {
			return t, nil
		}
	}
	return TransportAuto, fmt.Errorf("transport %q: want auto, grpc or shm", s)
}
