package shard

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// WebDataset reads WebDataset tar shards: consecutive members that share a
// key (the path up to the first dot of the file name) form one sample.
// Rows are (key, image, label, json): the first .jpg/.jpeg/.png/.webp/.bmp/
// .tif/.tiff member is the image, .cls holds the label as decimal text, .json
// the metadata; other members are left out.
//
// Inspect indexes each tar's members (offsets and sizes from the headers,
// without reading the data), and a block is a run of samples of about
// BlockBytes, read with one ranged read. A gzip-compressed shard cannot be
// read from the middle: it is one block, inflated whole (up to
// MaxInflatedShard).
type WebDataset struct{}

// Limits of WebDataset shards.
const (
	WebDatasetBlockBytes   = 4 << 20
	WebDatasetBlockSamples = 256
	MaxTarMember           = 1 << 30
	MaxInflatedShard       = 1 << 30
)

var tarImageExts = []string{"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"}

// Name implements Format.
func (WebDataset) Name() string { return "webdataset" }

var webdatasetSchema = arrow.NewSchema([]arrow.Field{
	{Name: "key", Type: arrow.BinaryTypes.String},
	{Name: "image", Type: arrow.BinaryTypes.Binary, Nullable: true},
	{Name: "label", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	{Name: "json", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

// member is one tar member's data: its name, and where its bytes lie (in the
// file, or in the inflated stream of a compressed shard).
type member struct {
	name      string
	off, size int64
}

type tarSample struct {
	key              string
	image, cls, json member // size -1: absent
}

type tarState struct {
	samples []tarSample
	starts  []int // block i is samples[starts[i]:starts[i+1]]
	gzipped bool
}

// Inspect implements Format.
func (WebDataset) Inspect(ctx context.Context, f File, info FileInfo, _ map[string]string) (*FileMeta, error) {
	return guard(info.URI, "tar index", func() (*FileMeta, error) {
		st, err := indexTar(ctx, f, info)
		if err != nil {
			return nil, err
		}
		meta := &FileMeta{Info: info, Schema: webdatasetSchema, State: st}
		if st.gzipped {
			st.starts = []int{0, len(st.samples)}
			meta.Blocks = []Block{{Rows: int64(len(st.samples)), Offset: 0, Length: info.Size}}
			return meta, nil
		}
		var b Block
		end := int64(0)
		for i, s := range st.samples {
			first, last := s.span()
			if b.Rows > 0 && (last-b.Offset > WebDatasetBlockBytes || b.Rows >= WebDatasetBlockSamples) {
				b.Length = end - b.Offset
				meta.Blocks = append(meta.Blocks, b)
				b = Block{}
			}
			if b.Rows == 0 {
				st.starts = append(st.starts, i)
				b.Offset = first
			}
			b.Rows++
			end = max(end, last)
		}
		if b.Rows > 0 {
			b.Length = end - b.Offset
			meta.Blocks = append(meta.Blocks, b)
		}
		st.starts = append(st.starts, len(st.samples))
		return meta, nil
	})
}

// span is the byte range of a sample's kept members.
func (s *tarSample) span() (int64, int64) {
	lo, hi := int64(-1), int64(0)
	for _, m := range []member{s.image, s.cls, s.json} {
		if m.size < 0 {
			continue
		}
		if lo < 0 || m.off < lo {
			lo = m.off
		}
		hi = max(hi, m.off+m.size)
	}
	return max(lo, 0), hi
}

// indexTar walks a tar's headers. Uncompressed, the reader seeks over member
// data (archive/tar skips it with Seek), so only headers are read.
func indexTar(ctx context.Context, f File, info FileInfo) (*tarState, error) {
	st := &tarState{}
	var r io.Reader
	var pos func() int64
	sr := io.NewSectionReader(f, 0, f.Size())
	var magic [2]byte
	if _, err := sr.ReadAt(magic[:], 0); err == nil && magic == [2]byte{0x1f, 0x8b} {
		zr, err := gzip.NewReader(sr)
		if err != nil {
			return nil, BadInput(info.URI, "gzip header", err)
		}
		c := &countingReader{r: io.LimitReader(zr, MaxInflatedShard+1)}
		r, pos = c, func() int64 { return c.n }
		st.gzipped = true
	} else {
		r, pos = sr, func() int64 { n, _ := sr.Seek(0, io.SeekCurrent); return n }
	}
	tr := tar.NewReader(r)
	var cur *tarSample
	for n := 0; ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		at := pos()
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if st.gzipped && pos() > MaxInflatedShard {
				return nil, &InputError{File: info.URI, Where: "inflated stream", Class: ErrUnsupported,
					Err: fmt.Errorf("compressed shard inflates to more than %d bytes: use an uncompressed .tar", int64(MaxInflatedShard))}
			}
			return nil, BadInput(info.URI, fmt.Sprintf("tar member %d (after byte %d)", n, at), err)
		}
		if h.Typeflag != tar.TypeReg { // the reader turns old-style TypeRegA into TypeReg
			continue // directories, links and the like carry no sample data
		}
		dir, base := path.Split(h.Name)
		if strings.HasPrefix(base, ".") {
			continue
		}
		dot := strings.IndexByte(base, '.')
		if dot <= 0 {
			continue // no extension: not part of a sample
		}
		key, ext := dir+base[:dot], strings.ToLower(base[dot+1:])
		off := pos()
		if h.Size < 0 || h.Size > MaxTarMember || (!st.gzipped && off+h.Size > f.Size()) {
			return nil, BadInput(info.URI, fmt.Sprintf("member %s at byte %d", h.Name, off),
				fmt.Errorf("member of %d bytes does not fit in the %d-byte file", h.Size, f.Size()))
		}
		if cur == nil || cur.key != key {
			st.samples = append(st.samples, tarSample{key: key, image: member{size: -1}, cls: member{size: -1}, json: member{size: -1}})
			cur = &st.samples[len(st.samples)-1]
		}
		m := member{name: h.Name, off: off, size: h.Size}
		switch {
		case ext == "cls" && cur.cls.size < 0:
			cur.cls = m
		case ext == "json" && cur.json.size < 0:
			cur.json = m
		case isTarImage(ext) && cur.image.size < 0:
			cur.image = m
		}
	}
	if len(st.samples) == 0 {
		return nil, BadInput(info.URI, "tar index", errors.New("no samples: no member has a key.extension name"))
	}
	return st, nil
}

func isTarImage(ext string) bool {
	for _, e := range tarImageExts {
		if ext == e {
			return true
		}
	}
	return false
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadBlock implements Format: one ranged read of the block's bytes (the
// whole inflated stream for a compressed shard), then the members are
// sliced out of it.
func (WebDataset) ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	b := meta.Blocks[block]
	where := fmt.Sprintf("samples of block %d (bytes %d..%d)", block, b.Offset, b.Offset+b.Length)
	return guard(meta.Info.URI, where, func() (arrow.RecordBatch, error) {
		st := meta.State.(*tarState)
		var buf []byte
		base := b.Offset
		if st.gzipped {
			zr, err := gzip.NewReader(io.NewSectionReader(f, 0, f.Size()))
			if err != nil {
				return nil, BadInput(meta.Info.URI, "gzip header", err)
			}
			if buf, err = io.ReadAll(io.LimitReader(zr, MaxInflatedShard)); err != nil {
				return nil, BadInput(meta.Info.URI, "inflating", err)
			}
			base = 0
		} else {
			buf = make([]byte, b.Length)
			if n, err := f.ReadAt(buf, b.Offset); n < len(buf) {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return nil, BadInput(meta.Info.URI, where, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		samples := st.samples[st.starts[block]:st.starts[block+1]]
		keys := array.NewStringBuilder(mem)
		images := array.NewBinaryBuilder(mem, arrow.BinaryTypes.Binary)
		labels := array.NewInt64Builder(mem)
		jsons := array.NewStringBuilder(mem)
		defer keys.Release()
		defer images.Release()
		defer labels.Release()
		defer jsons.Release()
		bytesOf := func(m member) ([]byte, error) {
			lo, hi := m.off-base, m.off-base+m.size
			if lo < 0 || hi > int64(len(buf)) {
				return nil, BadInput(meta.Info.URI, "member "+m.name, errors.New("member lies outside its block"))
			}
			return buf[lo:hi], nil
		}
		for _, s := range samples {
			keys.Append(s.key)
			if s.image.size < 0 {
				images.AppendNull()
			} else {
				v, err := bytesOf(s.image)
				if err != nil {
					return nil, err
				}
				images.Append(v)
			}
			if s.cls.size < 0 {
				labels.AppendNull()
			} else {
				v, err := bytesOf(s.cls)
				if err != nil {
					return nil, err
				}
				n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
				if err != nil {
					return nil, BadInput(meta.Info.URI, "member "+s.cls.name, fmt.Errorf("label is not an integer: %w", err))
				}
				labels.Append(n)
			}
			if s.json.size < 0 {
				jsons.AppendNull()
			} else {
				v, err := bytesOf(s.json)
				if err != nil {
					return nil, err
				}
				if !utf8.Valid(v) {
					return nil, BadInput(meta.Info.URI, "member "+s.json.name, errors.New("metadata is not UTF-8"))
				}
				jsons.Append(string(v))
			}
		}
		cols := []arrow.Array{keys.NewArray(), images.NewArray(), labels.NewArray(), jsons.NewArray()}
		rec := array.NewRecordBatch(webdatasetSchema, cols, int64(len(samples)))
		for _, c := range cols {
			c.Release()
		}
		return reorder(rec, columns)
	})
}

// RowPlace implements RowNamer: the tar and the sample's image member.
func (WebDataset) RowPlace(meta *FileMeta, block int, row int64) (string, string) {
	st := meta.State.(*tarState)
	s := st.samples[st.starts[block]+int(row)]
	if s.image.size >= 0 {
		return meta.Info.URI, fmt.Sprintf("member %s (byte %d)", s.image.name, s.image.off)
	}
	return meta.Info.URI, fmt.Sprintf("sample %s (no image member)", s.key)
}
