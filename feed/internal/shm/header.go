package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The ring's header, in the first page of the memfd, little-endian:
//
//	offset size  field
//	0      8     magic "loaderd\x00"
//	8      4     version (1)
//	12     4     header bytes (4096: the data area starts page-aligned)
//	16     8     total bytes of the memfd
//	24     8     data offset (= header bytes)
//	32     8     data bytes
//	40     4     slots: at most this many batches in the ring at once
//	44     4     alignment of every slot's offset (64)
//
// A client refuses a version it does not know; fields are only ever added
// after these, with a new version when their meaning would change.
const (
	Magic      = "loaderd\x00"
	Version    = 1
	HeaderSize = 4096
	// Align is the alignment of slot offsets: a cache line, so Arrow
	// buffers (8-byte aligned within a message) are aligned in the mapping.
	Align = 64
)

// Header describes a ring's layout.
type Header struct {
	Version    uint32
	Size       int64 // of the whole memfd
	DataOffset int64
	DataBytes  int64
	Slots      uint32
	Align      uint32
}

// ErrBadHeader means a mapping does not hold a ring this code understands.
var ErrBadHeader = errors.New("shm: bad ring header")

func (h Header) put(b []byte) {
	copy(b[0:8], Magic)
	binary.LittleEndian.PutUint32(b[8:], h.Version)
	binary.LittleEndian.PutUint32(b[12:], HeaderSize)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Size))
	binary.LittleEndian.PutUint64(b[24:], uint64(h.DataOffset))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.DataBytes))
	binary.LittleEndian.PutUint32(b[40:], h.Slots)
	binary.LittleEndian.PutUint32(b[44:], h.Align)
}

// ParseHeader reads and checks the header of a mapping of size bytes.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < 48 {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrBadHeader, len(b))
	}
	if string(b[0:8]) != Magic {
		return Header{}, fmt.Errorf("%w: magic %q", ErrBadHeader, b[0:8])
	}
	h := Header{
		Version:    binary.LittleEndian.Uint32(b[8:]),
		Size:       int64(binary.LittleEndian.Uint64(b[16:])),
		DataOffset: int64(binary.LittleEndian.Uint64(b[24:])),
		DataBytes:  int64(binary.LittleEndian.Uint64(b[32:])),
		Slots:      binary.LittleEndian.Uint32(b[40:]),
		Align:      binary.LittleEndian.Uint32(b[44:]),
	}
	if h.Version != Version {
		return Header{}, fmt.Errorf("%w: version %d, this client knows %d", ErrBadHeader, h.Version, Version)
	}
	if hs := binary.LittleEndian.Uint32(b[12:]); hs != HeaderSize || h.DataOffset != HeaderSize {
		return Header{}, fmt.Errorf("%w: header %d bytes, data at %d", ErrBadHeader, hs, h.DataOffset)
	}
	if h.DataBytes <= 0 || h.Size != h.DataOffset+h.DataBytes || h.Size != int64(len(b)) {
		return Header{}, fmt.Errorf("%w: %d data bytes at %d in %d (mapped %d)", ErrBadHeader, h.DataBytes, h.DataOffset, h.Size, len(b))
	}
	if h.Slots == 0 || h.Align == 0 {
		return Header{}, fmt.Errorf("%w: %d slots, alignment %d", ErrBadHeader, h.Slots, h.Align)
	}
	return h, nil
}
