// Package shm is the machinery of loaderd's shared-memory batch transport,
// free of gRPC and of sessions:
//
//   - Ring: one session's ring, a memfd the daemon creates, pre-faults, maps
//     writable and seals (no resizing, no new writable mappings); a versioned
//     header in its first page describes the layout. Batches are written
//     straight into slots: variable-size extents of the data area, placed by
//     an allocator that reuses any released extent, so a batch the client
//     still holds is never overwritten and never blocks the reuse of others.
//   - Handoff: a Unix socket that gives a ring's descriptor (SCM_RIGHTS) to
//     the one process entitled to it: the one presenting the session's
//     one-time token whose credentials (SO_PEERCRED) are the session's own.
//   - Claim and Map: the client half, used by the Go client and the tests.
//
// /dev/shm is not involved: a memfd lives in the kernel's internal tmpfs,
// so a container's small /dev/shm does not limit it.
package shm
