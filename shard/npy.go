package shard

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// NumPy reads .npy arrays and .npz archives of them. A row is one index of
// the first axis; an array of shape (N, d1, .., dk) is a column of nested
// fixed-size lists (d1 × .. × dk values per row), which the Python client
// turns back into an (n, d1, .., dk) ndarray. A .npy file is one column,
// named by option "column" (default "data", as Ray Data names it); an .npz
// archive gives one column per member, all with the same first axis.
//
// The header is parsed here (a small Python-literal dict) rather than with
// a library: the readers we found load whole arrays, while blocks need the
// header alone and then byte ranges — rows of a C-order array are contiguous
// bytes, read with one ranged ReadAt (pread, the same page-cache copy mmap
// would fault in, without tying Arrow buffers to an open file). Fortran-order
// arrays and compressed .npz members are read from their start for each
// block. Object arrays (pickles) are refused, as are complex, datetime and
// structured dtypes.
type NumPy struct{}

// OptColumn names a .npy file's column.
const OptColumn = "column"

// Name implements Format.
func (NumPy) Name() string { return "numpy" }

// npyArray is one parsed array: a .npy file or an .npz member.
type npyArray struct {
	name    string
	member  *zip.File // nil for a .npy file
	dataOff int64     // data start, in the file (.npy, stored member) or the member
	order   binary.ByteOrder
	kind    byte // b i u f U S
	size    int  // item size in bytes
	shape   []int64
	fortran bool
	rowLen  int64 // items per row
	typ     arrow.DataType
}

type npyState struct {
	arrays    []*npyArray
	rowsBlock int64
}

// Inspect implements Format.
func (NumPy) Inspect(ctx context.Context, f File, info FileInfo, opts map[string]string) (*FileMeta, error) {
	return guard(info.URI, "header", func() (*FileMeta, error) {
		blockBytes, err := intOption(opts, OptBlockBytes, defaultBlockBytes)
		if err != nil {
			return nil, err
		}
		st := &npyState{}
		if strings.HasSuffix(strings.ToLower(info.URI), ".npz") {
			zr, err := zip.NewReader(f, f.Size())
			if err != nil {
				return nil, BadInput(info.URI, "zip directory", err)
			}
			for _, m := range zr.File {
				if strings.HasSuffix(m.Name, "/") {
					continue
				}
				a, err := inspectMember(info.URI, f, m)
				if err != nil {
					return nil, err
				}
				st.arrays = append(st.arrays, a)
			}
			if len(st.arrays) == 0 {
				return nil, BadInput(info.URI, "zip directory", errors.New("archive holds no arrays"))
			}
		} else {
			name := opts[OptColumn]
			if name == "" {
				name = "data"
			}
			hdr, err := readRange(f, info.URI, 0, min(f.Size(), npyMaxPrefix))
			if err != nil {
				return nil, err
			}
			a, err := parseNpy(hdr, f.Size(), info.URI, "")
			if err != nil {
				return nil, err
			}
			a.name = name
			st.arrays = []*npyArray{a}
		}
		rows := st.arrays[0].rows()
		for _, a := range st.arrays {
			if a.rows() != rows {
				// Members disagree on the first axis: the archive is one row
				// holding each whole array.
				for _, a := range st.arrays {
					if err := a.asOneRow(); err != nil {
						return nil, &InputError{File: info.URI, Where: "member " + a.name, Class: ErrUnsupported, Err: err}
					}
				}
				rows = 1
				break
			}
		}
		maxRec, err := intOption(opts, OptMaxRecordBytes, defaultMaxRecordBytes)
		if err != nil {
			return nil, err
		}
		var rowBytes int64
		fields := make([]arrow.Field, len(st.arrays))
		for i, a := range st.arrays {
			// Bound what one block read allocates, whatever a header claims.
			if rb := a.rowLen * int64(a.size); rb > maxRec {
				return nil, &InputError{File: info.URI, Where: "array " + a.name, Class: ErrUnsupported,
					Err: fmt.Errorf("one row is %d bytes, over max_record_bytes=%d", rb, maxRec)}
			}
			if whole := a.rowLen * a.rows() * int64(a.size); a.fortran && len(a.shape) > 1 && whole > maxRec {
				return nil, &InputError{File: info.URI, Where: "array " + a.name, Class: ErrUnsupported,
					Err: fmt.Errorf("fortran-order arrays are read whole, and this one is %d bytes, over max_record_bytes=%d (save it with numpy.ascontiguousarray)", whole, maxRec)}
			}
			rowBytes += a.rowLen * int64(a.size)
			fields[i] = arrow.Field{Name: a.name, Type: a.typ, Nullable: false}
		}
		st.rowsBlock = max(1, blockBytes/max(1, rowBytes))
		meta := &FileMeta{Info: info, Schema: arrow.NewSchema(fields, nil), State: st}
		for r := int64(0); r < rows; r += st.rowsBlock {
			n := min(st.rowsBlock, rows-r)
			a := st.arrays[0]
			meta.Blocks = append(meta.Blocks, Block{Rows: n, Offset: a.dataOff + r*rowBytes, Length: n * rowBytes})
		}
		return meta, nil
	})
}

// npyMaxPrefix bounds the header read: numpy itself refuses headers over
// 10 000 bytes unless told otherwise.
const npyMaxPrefix = 64 << 10

func inspectMember(uri string, f File, m *zip.File) (*npyArray, error) {
	where := "member " + m.Name
	rc, err := m.Open()
	if err != nil {
		return nil, BadInput(uri, where, err)
	}
	defer rc.Close()
	hdr, err := io.ReadAll(io.LimitReader(rc, npyMaxPrefix))
	if err != nil {
		return nil, BadInput(uri, where, err)
	}
	a, err := parseNpy(hdr, int64(m.UncompressedSize64), uri, where)
	if err != nil {
		return nil, err
	}
	a.name = strings.TrimSuffix(m.Name, ".npy")
	a.member = m
	if m.Method == zip.Store {
		// Stored members are plain byte ranges of the archive: read in place.
		off, err := m.DataOffset()
		if err != nil {
			return nil, BadInput(uri, where, err)
		}
		a.dataOff += off
		a.member = nil
	}
	return a, nil
}

// asOneRow makes the whole array a single row, as if it had a leading axis
// of length 1.
func (a *npyArray) asOneRow() error {
	a.shape = append([]int64{1}, a.shape...)
	a.rowLen = 1
	for _, n := range a.shape[1:] {
		a.rowLen *= n
	}
	var err error
	a.typ, err = a.arrowType()
	return err
}

func (a *npyArray) rows() int64 {
	if len(a.shape) == 0 {
		return 1 // a 0-d array is one row holding a scalar
	}
	return a.shape[0]
}

// parseNpy parses a .npy header from the file's first bytes; total is the
// file's (or member's) full size, to check the data fits the shape.
func parseNpy(b []byte, total int64, uri, where string) (*npyArray, error) {
	bad := func(at string, err error) error {
		if where != "" {
			at = where + ", " + at
		}
		return BadInput(uri, at, err)
	}
	if len(b) < 10 || string(b[:6]) != "\x93NUMPY" {
		return nil, bad("byte 0", errors.New("not a .npy file (bad magic)"))
	}
	major := b[6]
	var hlen, start int64
	switch major {
	case 1:
		hlen, start = int64(binary.LittleEndian.Uint16(b[8:10])), 10
	case 2, 3:
		if len(b) < 12 {
			return nil, bad("byte 8", errors.New("truncated header"))
		}
		hlen, start = int64(binary.LittleEndian.Uint32(b[8:12])), 12
	default:
		return nil, bad("byte 6", fmt.Errorf("unknown .npy format version %d.%d", major, b[7]))
	}
	if start+hlen > int64(len(b)) {
		return nil, bad("byte 8", fmt.Errorf("header length %d runs past the file (%d bytes)", hlen, min(total, int64(len(b)))))
	}
	text := string(b[start : start+hlen])
	if major < 3 && !isASCII(text) || !utf8.ValidString(text) {
		return nil, bad(fmt.Sprintf("byte %d", start), errors.New("header is not text"))
	}
	d, err := parsePyDict(text)
	if err != nil {
		return nil, bad(fmt.Sprintf("byte %d", start), fmt.Errorf("header %q: %w", truncate(text, 80), err))
	}
	descr, ok1 := d["descr"].(string)
	fortran, ok2 := d["fortran_order"].(bool)
	shape, ok3 := d["shape"].([]int64)
	if !ok1 || !ok2 || !ok3 {
		if _, structured := d["descr"].([]any); structured {
			return nil, &InputError{File: uri, Where: where, Class: ErrUnsupported, Err: errors.New("structured dtypes are not supported")}
		}
		return nil, bad(fmt.Sprintf("byte %d", start), fmt.Errorf("header %q lacks descr, fortran_order or shape", truncate(text, 80)))
	}
	a := &npyArray{dataOff: start + hlen, shape: shape, fortran: fortran, rowLen: 1}
	if err := a.setType(descr); err != nil {
		return nil, &InputError{File: uri, Where: where, Class: ErrUnsupported, Err: err}
	}
	count := int64(1)
	for i, n := range shape {
		if n < 0 {
			return nil, bad("header", fmt.Errorf("negative dimension %d", n))
		}
		hi, lo := bits.Mul64(uint64(count), uint64(n))
		if hi != 0 || lo > math.MaxInt64/uint64(a.size) {
			return nil, bad("header", fmt.Errorf("shape %v overflows", shape))
		}
		count = int64(lo)
		if i > 0 {
			a.rowLen *= n
		}
	}
	if want, have := count*int64(a.size), total-a.dataOff; want != have {
		return nil, bad(fmt.Sprintf("byte %d", a.dataOff), fmt.Errorf("shape %v of %s needs %d data bytes, the file holds %d", shape, descr, want, have))
	}
	if a.typ, err = a.arrowType(); err != nil {
		return nil, &InputError{File: uri, Where: where, Class: ErrUnsupported, Err: err}
	}
	return a, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func (a *npyArray) setType(descr string) error {
	if len(descr) < 2 {
		return fmt.Errorf("dtype %q is not understood", descr)
	}
	switch descr[0] {
	case '<', '|', '=':
		a.order = binary.LittleEndian
	case '>':
		a.order = binary.BigEndian
	default:
		return fmt.Errorf("dtype %q is not understood", descr)
	}
	a.kind = descr[1]
	n, err := strconv.Atoi(descr[2:])
	if err != nil || n <= 0 || n > 1<<20 {
		if a.kind == 'O' {
			return errors.New("object arrays (pickled Python objects) are refused: loading them runs arbitrary code")
		}
		return fmt.Errorf("dtype %q is not understood", descr)
	}
	a.size = n
	ok := false
	switch a.kind {
	case 'b':
		ok = n == 1
	case 'i', 'u':
		ok = n == 1 || n == 2 || n == 4 || n == 8
	case 'f':
		ok = n == 2 || n == 4 || n == 8
	case 'U': // descr counts characters, of 4 bytes each
		ok, a.size = true, n*4
	case 'S':
		ok = true
	case 'O':
		return errors.New("object arrays (pickled Python objects) are refused: loading them runs arbitrary code")
	}
	if !ok {
		return fmt.Errorf("dtype %q is not supported (bool, int, uint, float, U and S are)", descr)
	}
	return nil
}

func (a *npyArray) arrowType() (arrow.DataType, error) {
	var t arrow.DataType
	switch a.kind {
	case 'b':
		t = arrow.FixedWidthTypes.Boolean
	case 'i':
		t = map[int]arrow.DataType{1: arrow.PrimitiveTypes.Int8, 2: arrow.PrimitiveTypes.Int16, 4: arrow.PrimitiveTypes.Int32, 8: arrow.PrimitiveTypes.Int64}[a.size]
	case 'u':
		t = map[int]arrow.DataType{1: arrow.PrimitiveTypes.Uint8, 2: arrow.PrimitiveTypes.Uint16, 4: arrow.PrimitiveTypes.Uint32, 8: arrow.PrimitiveTypes.Uint64}[a.size]
	case 'f':
		t = map[int]arrow.DataType{2: arrow.FixedWidthTypes.Float16, 4: arrow.PrimitiveTypes.Float32, 8: arrow.PrimitiveTypes.Float64}[a.size]
	case 'U':
		t = arrow.BinaryTypes.String
	case 'S':
		t = arrow.BinaryTypes.Binary
	}
	if len(a.shape) > 1 && (a.kind == 'U' || a.kind == 'S') {
		return nil, errors.New("string arrays of more than one dimension are not supported")
	}
	for i := len(a.shape) - 1; i >= 1; i-- {
		t = arrow.FixedSizeListOf(int32(a.shape[i]), t)
	}
	return t, nil
}

// ReadBlock implements Format.
func (NumPy) ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	st := meta.State.(*npyState)
	r0 := int64(block) * st.rowsBlock
	n := meta.Blocks[block].Rows
	where := fmt.Sprintf("rows %d..%d", r0, r0+n)
	return guard(meta.Info.URI, where, func() (arrow.RecordBatch, error) {
		cols := make([]arrow.Array, 0, len(st.arrays))
		defer func() {
			for _, c := range cols {
				c.Release()
			}
		}()
		for _, a := range st.arrays {
			if columns != nil && !contains(columns, a.name) {
				continue
			}
			col, err := a.read(f, meta.Info.URI, r0, n, mem)
			if err != nil {
				return nil, err
			}
			cols = append(cols, col)
		}
		sc, err := Project(meta.Schema, columns)
		if err != nil {
			return nil, err
		}
		if columns == nil {
			return array.NewRecordBatch(sc, cols, n), nil
		}
		// Columns come in file order; put them in the order asked for.
		byName := make([]arrow.Field, 0, len(cols))
		for _, a := range st.arrays {
			if contains(columns, a.name) {
				byName = append(byName, arrow.Field{Name: a.name, Type: a.typ})
			}
		}
		return reorder(array.NewRecordBatch(arrow.NewSchema(byName, nil), cols, n), columns)
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// read returns rows [r0, r0+n) of the array as an Arrow array.
func (a *npyArray) read(f File, uri string, r0, n int64, mem memory.Allocator) (arrow.Array, error) {
	rowBytes := a.rowLen * int64(a.size)
	buf := memory.NewResizableBuffer(mem)
	defer buf.Release()
	buf.Resize(int(n * rowBytes))
	dst := buf.Bytes()
	switch {
	case a.fortran && len(a.shape) > 1:
		all, err := a.readData(f, uri, 0, a.rowLen*a.shape[0]*int64(a.size))
		if err != nil {
			return nil, err
		}
		a.gatherFortran(all, dst, r0, n)
	default:
		raw, err := a.readData(f, uri, r0*rowBytes, n*rowBytes)
		if err != nil {
			return nil, err
		}
		copy(dst, raw)
	}
	if a.order == binary.BigEndian && a.size > 1 && a.kind != 'S' {
		swap(dst, a.kind, a.size)
	}
	items := int(n * a.rowLen)
	var leaf arrow.Array
	switch a.kind {
	case 'b':
		bld := array.NewBooleanBuilder(mem)
		defer bld.Release()
		bld.Reserve(items)
		for _, v := range dst {
			bld.UnsafeAppend(v != 0)
		}
		leaf = bld.NewArray()
	case 'U', 'S':
		leaf = fixedStrings(dst, a.kind, a.size, mem)
	default:
		leafType := a.typ
		for {
			fl, ok := leafType.(*arrow.FixedSizeListType)
			if !ok {
				break
			}
			leafType = fl.Elem()
		}
		data := array.NewData(leafType, items, []*memory.Buffer{nil, buf}, nil, 0, 0)
		leaf = array.MakeFromData(data)
		data.Release()
	}
	// Wrap the flat values in one fixed-size list per trailing dimension.
	out := leaf
	for i := len(a.shape) - 1; i >= 1; i-- {
		t := a.typ
		length := n
		for j := 1; j < i; j++ {
			t = t.(*arrow.FixedSizeListType).Elem()
			length *= a.shape[j]
		}
		data := array.NewData(t, int(length), []*memory.Buffer{nil}, []arrow.ArrayData{out.Data()}, 0, 0)
		out.Release()
		out = array.MakeFromData(data)
		data.Release()
	}
	return out, nil
}

// readData reads n bytes at offset off of the array's data.
func (a *npyArray) readData(f File, uri string, off, n int64) ([]byte, error) {
	if a.member == nil {
		return readRange(f, uri, a.dataOff+off, n)
	}
	rc, err := a.member.Open()
	if err != nil {
		return nil, BadInput(uri, "member "+a.member.Name, err)
	}
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, a.dataOff+off); err != nil {
		return nil, BadInput(uri, "member "+a.member.Name, err)
	}
	out := make([]byte, n)
	if _, err := io.ReadFull(rc, out); err != nil {
		return nil, BadInput(uri, fmt.Sprintf("member %s, byte %d", a.member.Name, a.dataOff+off), err)
	}
	return out, nil
}

// gatherFortran copies rows [r0, r0+n) of a Fortran-order array (first index
// fastest) into dst in C order.
func (a *npyArray) gatherFortran(all, dst []byte, r0, n int64) {
	dims := a.shape[1:]
	size := int64(a.size)
	rows := a.shape[0]
	idx := make([]int64, len(dims))
	for r := int64(0); r < n; r++ {
		clear(idx)
		for c := int64(0); c < a.rowLen; c++ {
			// Fortran offset of (r0+r, idx...): the first index varies fastest.
			off, stride := r0+r, rows
			for k := range dims {
				off += idx[k] * stride
				stride *= dims[k]
			}
			copy(dst[(r*a.rowLen+c)*size:], all[off*size:(off+1)*size])
			for k := len(dims) - 1; k >= 0; k-- { // next C-order index
				idx[k]++
				if idx[k] < dims[k] {
					break
				}
				idx[k] = 0
			}
		}
	}
}

func swap(b []byte, kind byte, size int) {
	if kind == 'U' {
		size = 4
	}
	for i := 0; i+size <= len(b); i += size {
		for l, r := i, i+size-1; l < r; l, r = l+1, r-1 {
			b[l], b[r] = b[r], b[l]
		}
	}
}

// fixedStrings turns fixed-width numpy strings into Arrow strings (U: UTF-32,
// little-endian after swap) or binaries (S), trailing NULs removed as numpy
// does.
func fixedStrings(b []byte, kind byte, size int, mem memory.Allocator) arrow.Array {
	if kind == 'S' {
		bld := array.NewBinaryBuilder(mem, arrow.BinaryTypes.Binary)
		defer bld.Release()
		for i := 0; i+size <= len(b); i += size {
			bld.Append(bytes.TrimRight(b[i:i+size], "\x00"))
		}
		return bld.NewArray()
	}
	bld := array.NewStringBuilder(mem)
	defer bld.Release()
	var sb strings.Builder
	for i := 0; i+size <= len(b); i += size {
		sb.Reset()
		for j := i; j < i+size; j += 4 {
			r := rune(binary.LittleEndian.Uint32(b[j:]))
			if r == 0 {
				break
			}
			if !utf8.ValidRune(r) {
				r = utf8.RuneError
			}
			sb.WriteRune(r)
		}
		bld.Append(sb.String())
	}
	return bld.NewArray()
}

// parsePyDict parses the Python dict literal of a .npy header: string keys;
// values are strings, True/False, tuples of ints, or lists (structured
// dtypes, returned as []any so they can be refused by name).
func parsePyDict(s string) (map[string]any, error) {
	p := pyParser{s: s}
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	d, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not a dict")
	}
	p.space()
	if p.i != len(p.s) {
		return nil, fmt.Errorf("trailing text at %d", p.i)
	}
	return d, nil
}

type pyParser struct {
	s     string
	i     int
	depth int
}

func (p *pyParser) space() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *pyParser) value() (any, error) {
	p.space()
	if p.i >= len(p.s) {
		return nil, errors.New("unexpected end")
	}
	if p.depth > 16 {
		return nil, errors.New("nested too deeply")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.depth++
		defer func() { p.depth-- }()
		p.i++
		d := map[string]any{}
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return d, nil
			}
			k, err := p.value()
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, errors.New("dict key is not a string")
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, errors.New("expected ':'")
			}
			p.i++
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			d[ks] = v
			if err := p.sep('}'); err != nil {
				return nil, err
			}
		}
	case c == '(' || c == '[':
		p.depth++
		defer func() { p.depth-- }()
		p.i++
		end := byte(')')
		if c == '[' {
			end = ']'
		}
		var items []any
		ints := []int64{}
		allInts := true
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == end {
				p.i++
				if c == '(' && allInts {
					return ints, nil
				}
				return items, nil
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			items = append(items, v)
			if n, ok := v.(int64); ok {
				ints = append(ints, n)
			} else {
				allInts = false
			}
			if err := p.sep(end); err != nil {
				return nil, err
			}
		}
	case c == '\'' || c == '"':
		end := strings.IndexByte(p.s[p.i+1:], c)
		if end < 0 {
			return nil, errors.New("unterminated string")
		}
		v := p.s[p.i+1 : p.i+1+end]
		p.i += end + 2
		return v, nil
	case c >= '0' && c <= '9' || c == '-':
		j := p.i + 1
		for j < len(p.s) && (p.s[j] >= '0' && p.s[j] <= '9' || p.s[j] == 'L') {
			j++
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(p.s[p.i:j], "L"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad integer %q", p.s[p.i:j])
		}
		p.i = j
		return n, nil
	case strings.HasPrefix(p.s[p.i:], "True"):
		p.i += 4
		return true, nil
	case strings.HasPrefix(p.s[p.i:], "False"):
		p.i += 5
		return false, nil
	}
	return nil, fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
}

// sep consumes a ',' or sees the closing bracket.
func (p *pyParser) sep(end byte) error {
	p.space()
	if p.i < len(p.s) && p.s[p.i] == ',' {
		p.i++
		return nil
	}
	if p.i < len(p.s) && p.s[p.i] == end {
		return nil
	}
	return fmt.Errorf("expected ',' or %q at %d", end, p.i)
}

var _ Format = NumPy{}
