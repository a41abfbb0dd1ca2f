// Package shard turns a dataset spec into rows: it discovers files under the
// configured data roots, reads each format into Arrow record batches one block at
// a time, and computes the epoch plan — which rank gets which sample, in which
// order — as a pure function of the file list, seed, epoch and world size.
//
// It knows nothing of gRPC or sessions; the daemon's other layers call it.
package shard
