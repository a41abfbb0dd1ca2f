package shard

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
)

// planAlgorithm names the plan function. Bump it whenever NewEpochPlan or
// RankPlan.Window give a different order for the same inputs: daemons of
// different versions then show different plan fingerprints instead of
// silently serving a job two different orders.
const planAlgorithm = 1

// contentDigest identifies what the dataset reads, as any node lists it: the
// spec, and each file's path, size and block row counts. File versions are
// left out: they hold modification times, which copies of the same files on
// different nodes need not share.
func (d *Dataset) contentDigest() [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(d.Spec.Fingerprint()))
	for _, f := range d.Files {
		writeString(h, f.Info.URI)
		writeUint(h, uint64(f.Info.Size), uint64(len(f.Blocks)))
		for _, b := range f.Blocks {
			writeUint(h, uint64(b.Rows))
		}
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// PlanFingerprint identifies epoch plan p of d wherever it is computed: two
// daemons that show the same fingerprint serve the same samples in the same
// order to the same ranks. It covers the dataset's files and blocks, the world
// size, mode, shuffle and epoch, the plan algorithm, and the block order
// itself. p must have been made from d's BlockRows.
func (d *Dataset) PlanFingerprint(p *EpochPlan) string {
	h := sha256.New()
	h.Write(d.digest[:])
	writeUint(h, planAlgorithm, uint64(p.world), uint64(p.mode), uint64(p.epoch))
	if p.shuffle != nil {
		writeUint(h, 1, p.shuffle.Seed, uint64(p.windowRows()))
	} else {
		writeUint(h, 0)
	}
	writeUint(h, uint64(len(p.order)))
	for _, b := range p.order {
		writeUint(h, uint64(b))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func writeUint(h hash.Hash, vs ...uint64) {
	var buf [8]byte
	for _, v := range vs {
		binary.LittleEndian.PutUint64(buf[:], v)
		h.Write(buf[:])
	}
}

// writeString writes s with its length, so that adjacent strings cannot run
// into each other.
func writeString(h hash.Hash, s string) {
	writeUint(h, uint64(len(s)))
	h.Write([]byte(s))
}
