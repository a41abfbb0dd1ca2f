package decode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Format is an image file format, recognised by its magic bytes.
type Format int

// The formats the CPU decoder reads.
const (
	UnknownFormat Format = iota
	JPEG
	PNG
	WebP
	BMP
	TIFF
)

func (f Format) String() string {
	return [...]string{"unknown", "jpeg", "png", "webp", "bmp", "tiff"}[f]
}

// Header is what an image file says about itself before it is decoded: enough
// to refuse it (bad dimensions, too many pixels, unsupported coding) without
// allocating for its pixels, and to plan the crop.
type Header struct {
	Format        Format
	Width, Height int // as stored, before the EXIF orientation
	// Orientation is the EXIF orientation, 1 (as stored) to 8.
	Orientation int
	// JPEG only.
	Components  int  // 1 (gray), 3 (YCbCr or RGB), 4 (CMYK or YCCK)
	Progressive bool // progressive JPEGs decode their whole file whatever the crop
	Adobe       bool // an Adobe APP14 marker: 4-component data is stored inverted
	scan        int  // offset of the first SOS marker
}

// Oriented returns the size after the EXIF orientation is applied.
func (h Header) Oriented() (w, ht int) {
	if h.Orientation >= 5 {
		return h.Height, h.Width
	}
	return h.Width, h.Height
}

// ParseHeader reads an image's header. It never reads past data and never
// allocates in proportion to what the header claims.
func ParseHeader(data []byte) (Header, error) {
	h := Header{Orientation: 1}
	var err error
	switch {
	case len(data) >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff:
		h.Format = JPEG
		err = h.parseJPEG(data)
	case len(data) >= 8 && string(data[:8]) == "\x89PNG\r\n\x1a\n":
		h.Format = PNG
		err = h.parsePNG(data)
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		h.Format = WebP
		err = h.parseWebP(data)
	case len(data) >= 2 && string(data[:2]) == "BM":
		h.Format = BMP
		err = h.parseBMP(data)
	case len(data) >= 4 && (string(data[:4]) == "II*\x00" || string(data[:4]) == "MM\x00*"):
		h.Format = TIFF
		err = h.parseTIFF(data)
	case len(data) == 0:
		return h, corrupt("empty file")
	default:
		return h, &Error{Kind: ErrCorrupt, Err: fmt.Errorf("not a JPEG, PNG, WebP, BMP or TIFF image (starts with % x)", data[:min(len(data), 8)])}
	}
	if err != nil {
		return h, err
	}
	if h.Width <= 0 || h.Height <= 0 {
		return h, corrupt(fmt.Sprintf("%s header gives a %dx%d image", h.Format, h.Width, h.Height))
	}
	return h, nil
}

func corrupt(msg string) error {
	return &Error{Kind: ErrCorrupt, Err: errors.New(msg)}
}

func unsupported(format string, args ...any) error {
	return &Error{Kind: ErrUnsupported, Err: fmt.Errorf(format, args...)}
}

var errShort = corrupt("header is truncated")

func (h *Header) parseJPEG(b []byte) error {
	sof := false
	i := 2
	for {
		// Markers may be preceded by any number of 0xff fill bytes.
		for i < len(b) && b[i] != 0xff {
			i++ // garbage between segments: libjpeg warns and goes on
		}
		for i < len(b) && b[i] == 0xff {
			i++
		}
		if i >= len(b) {
			return errShort
		}
		m := b[i]
		i++
		switch {
		case m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7):
			continue // no payload
		case m == 0xd9:
			return corrupt("JPEG ends before its image data")
		}
		if i+2 > len(b) {
			return errShort
		}
		n := int(binary.BigEndian.Uint16(b[i:]))
		if n < 2 || i+n > len(b) {
			return corrupt(fmt.Sprintf("JPEG segment 0x%02x at byte %d has bad length %d", m, i-2, n))
		}
		seg := b[i+2 : i+n]
		switch {
		case m == 0xda:
			if !sof {
				return corrupt("JPEG has a scan before its frame header")
			}
			h.scan = i - 2
			return nil
		case m == 0xe1 && bytes.HasPrefix(seg, []byte("Exif\x00\x00")):
			if o := exifOrientation(seg[6:]); o != 0 && h.Orientation == 1 {
				h.Orientation = o
			}
		case m == 0xee && bytes.HasPrefix(seg, []byte("Adobe")):
			h.Adobe = true
		case m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc:
			if sof {
				return corrupt("JPEG has two frame headers")
			}
			sof = true
			if len(seg) < 6 {
				return corrupt("JPEG frame header is too short")
			}
			if m == 0xc3 || m == 0xc7 || m == 0xcb || m == 0xcf {
				return unsupported("lossless JPEG (SOF%d) is not supported", m-0xc0)
			}
			if seg[0] != 8 {
				return unsupported("%d-bit JPEG is not supported (only 8-bit)", seg[0])
			}
			h.Height = int(binary.BigEndian.Uint16(seg[1:]))
			h.Width = int(binary.BigEndian.Uint16(seg[3:]))
			h.Components = int(seg[5])
			if h.Components != 1 && h.Components != 3 && h.Components != 4 {
				return corrupt(fmt.Sprintf("JPEG has %d components", h.Components))
			}
			if len(seg) < 6+3*h.Components {
				return corrupt("JPEG frame header is too short for its components")
			}
			h.Progressive = m == 0xc2 || m == 0xc6 || m == 0xca || m == 0xce
			if h.Height == 0 || h.Width == 0 {
				return corrupt(fmt.Sprintf("JPEG frame header gives a %dx%d image", h.Width, h.Height))
			}
		}
		i += n
	}
}

// complete reports whether a JPEG's data ends with an end-of-image marker
// after its first scan. A truncated file has none there: the only FF D9 left
// may be an EXIF thumbnail's, before the scan. Entropy-coded data never holds
// FF D9 (0xff bytes in it are stuffed as FF 00).
func (h *Header) complete(b []byte) bool {
	return bytes.LastIndex(b, []byte{0xff, 0xd9}) > h.scan
}

func (h *Header) parsePNG(b []byte) error {
	i := 8
	for n := 0; ; n++ {
		if i+8 > len(b) {
			if n == 0 {
				return errShort
			}
			return nil // the decoder reports where the data ends
		}
		size := int64(binary.BigEndian.Uint32(b[i:]))
		typ := string(b[i+4 : i+8])
		if n == 0 {
			if typ != "IHDR" || size != 13 || i+8+13 > len(b) {
				return corrupt("PNG does not start with a 13-byte IHDR chunk")
			}
			h.Width = int(binary.BigEndian.Uint32(b[i+8:]))
			h.Height = int(binary.BigEndian.Uint32(b[i+12:]))
			if h.Width > 1<<30 || h.Height > 1<<30 {
				return corrupt(fmt.Sprintf("PNG size %dx%d is out of range", h.Width, h.Height))
			}
		}
		if typ == "IDAT" || typ == "IEND" || size > int64(len(b)-i-12) {
			return nil
		}
		if typ == "eXIf" {
			if o := exifOrientation(b[i+8 : i+8+int(size)]); o != 0 {
				h.Orientation = o
			}
		}
		i += 12 + int(size)
	}
}

func (h *Header) parseWebP(b []byte) error {
	i := 12
	for i+8 <= len(b) {
		typ := string(b[i : i+4])
		size := int(binary.LittleEndian.Uint32(b[i+4:]))
		if size < 0 || size > len(b)-i-8 {
			size = len(b) - i - 8 // a truncated chunk: the decoder reports it
		}
		c := b[i+8 : i+8+size]
		switch typ {
		case "VP8X":
			if len(c) < 10 {
				return errShort
			}
			h.Width = 1 + int(uint32(c[4])|uint32(c[5])<<8|uint32(c[6])<<16)
			h.Height = 1 + int(uint32(c[7])|uint32(c[8])<<8|uint32(c[9])<<16)
		case "VP8 ":
			if len(c) < 10 || c[3] != 0x9d || c[4] != 0x01 || c[5] != 0x2a {
				return corrupt("WebP VP8 frame header is bad")
			}
			if h.Width == 0 {
				h.Width = int(binary.LittleEndian.Uint16(c[6:]) & 0x3fff)
				h.Height = int(binary.LittleEndian.Uint16(c[8:]) & 0x3fff)
			}
			return nil
		case "VP8L":
			if len(c) < 5 || c[0] != 0x2f {
				return corrupt("WebP VP8L header is bad")
			}
			if h.Width == 0 {
				v := binary.LittleEndian.Uint32(c[1:])
				h.Width = 1 + int(v&0x3fff)
				h.Height = 1 + int((v>>14)&0x3fff)
			}
			return nil
		case "EXIF":
			if o := exifOrientation(bytes.TrimPrefix(c, []byte("Exif\x00\x00"))); o != 0 {
				h.Orientation = o
			}
		}
		i += 8 + size + size&1
	}
	if h.Width == 0 {
		return errShort
	}
	return nil
}

func (h *Header) parseBMP(b []byte) error {
	if len(b) < 26 {
		return errShort
	}
	h.Width = int(int32(binary.LittleEndian.Uint32(b[18:])))
	ht := int(int32(binary.LittleEndian.Uint32(b[22:])))
	if ht < 0 {
		ht = -ht // top-down
	}
	h.Height = ht
	return nil
}

func (h *Header) parseTIFF(b []byte) error {
	t, ok := readIFD0(b)
	if !ok {
		return corrupt("TIFF header is bad")
	}
	h.Width, h.Height = int(t.width), int(t.height)
	if t.orientation >= 1 && t.orientation <= 8 {
		h.Orientation = int(t.orientation)
	}
	return nil
}

// exifOrientation returns the Orientation tag of a TIFF-structured EXIF
// block, or 0 when there is none or it is out of range.
func exifOrientation(b []byte) int {
	t, ok := readIFD0(b)
	if !ok || t.orientation < 1 || t.orientation > 8 {
		return 0
	}
	return int(t.orientation)
}

type ifd0 struct{ width, height, orientation uint32 }

// readIFD0 reads the first IFD of a TIFF structure: image size and
// orientation, each a SHORT or LONG.
func readIFD0(b []byte) (ifd0, bool) {
	var t ifd0
	if len(b) < 8 {
		return t, false
	}
	var bo binary.ByteOrder
	switch string(b[:4]) {
	case "II*\x00":
		bo = binary.LittleEndian
	case "MM\x00*":
		bo = binary.BigEndian
	default:
		return t, false
	}
	off := int64(bo.Uint32(b[4:]))
	if off < 8 || off+2 > int64(len(b)) {
		return t, false
	}
	n := int64(bo.Uint16(b[off:]))
	for e := range n {
		p := off + 2 + 12*e
		if p+12 > int64(len(b)) {
			break
		}
		tag, typ, count := bo.Uint16(b[p:]), bo.Uint16(b[p+2:]), bo.Uint32(b[p+4:])
		if count != 1 {
			continue
		}
		var v uint32
		switch typ {
		case 3: // SHORT
			v = uint32(bo.Uint16(b[p+8:]))
		case 4: // LONG
			v = bo.Uint32(b[p+8:])
		default:
			continue
		}
		switch tag {
		case 256:
			t.width = v
		case 257:
			t.height = v
		case 274:
			t.orientation = v
		}
	}
	return t, true
}
