// Package feed is loaderd's front door: the versioned gRPC API
// (api/loaderd/feed/v1), the server on a Unix socket with its interceptors and
// peer-credential checks, the sessions that stream batches to trainer ranks
// inline in gRPC messages or through a shared-memory ring (internal/shm, with
// its hand-off socket beside the main one), and a Go client. It is the only
// package that sees proto types; status.go is the only place that turns
// errors into gRPC codes.
package feed
