package shard

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
)

// Options shared by the text formats (CSV, JSON Lines) and NumPy.
const (
	// OptBlockBytes is the target size of a block in bytes: blocks are cut at
	// the first record boundary past it, so large files split across ranks.
	OptBlockBytes = "block_bytes"
	// OptSchema is an explicit Arrow schema, serialized as an IPC schema
	// message and base64-encoded (pyarrow: schema.serialize()). It overrides
	// inference.
	OptSchema = "schema"
	// OptInferBytes bounds the sample, from the file's start, that types are
	// inferred from.
	OptInferBytes = "infer_bytes"
	// OptMaxRecordBytes bounds one record (a CSV row, a JSON value).
	OptMaxRecordBytes = "max_record_bytes"

	defaultBlockBytes     = 4 << 20
	defaultInferBytes     = 1 << 20
	defaultMaxRecordBytes = 64 << 20
)

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// intOption reads a positive integer option.
func intOption(opts map[string]string, key string, def int64) (int64, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, Invalidf("option %s=%q is not a positive integer", key, v)
	}
	return n, nil
}

// schemaOption decodes OptSchema, nil when absent.
func schemaOption(opts map[string]string) (*arrow.Schema, error) {
	v := opts[OptSchema]
	if v == "" {
		return nil, nil
	}
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, Invalidf("option schema is not base64: %v", err)
	}
	rdr, err := ipc.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, Invalidf("option schema is not an Arrow IPC schema: %v", err)
	}
	defer rdr.Release()
	return rdr.Schema(), nil
}

// EncodeSchema serializes a schema for OptSchema.
func EncodeSchema(sc *arrow.Schema) string {
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(sc))
	_ = w.Close() // writing to a bytes.Buffer cannot fail
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// textState is what Inspect learned about a text file, reused by ReadBlock.
type textState struct {
	dataStart int64   // first byte after a BOM and header
	lines     []int64 // 1-based line of each block's first record
	header    []string
}

// recordScanner cuts a text file into records. A record ends at a newline
// outside any quoted (CSV) or nested/quoted (JSON) context; blank records are
// skipped, as encoding/csv and JSON Lines readers do. It tracks lines so that
// every record and block can be named by line.
type recordScanner struct {
	json  bool // JSON nesting rules; otherwise CSV quoting
	comma byte // CSV delimiter (an ASCII one; others only end fields)
	// onRecord is called for each non-blank record: its byte range (the
	// trailing newline included in end) and the line it starts on. rec holds
	// the record's bytes when keep is set.
	onRecord func(start, end, line int64, rec []byte) error
	keep     bool
	maxRec   int64
	uri      string
}

// scan reads f from off to its end once, sequentially.
func (s *recordScanner) scan(ctx context.Context, f io.ReaderAt, off, size int64) error {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	var (
		line       int64 = 1
		recStart         = off
		recLine    int64 = 1
		blank            = true // only whitespace so far in this record
		inQuote    bool
		escaped    bool
		closed     bool // CSV: a quoted field just closed
		fieldStart = true
		depth      int
		rec        []byte
		pos        = off
	)
	emit := func(end int64) error {
		if !blank {
			if err := s.onRecord(recStart, end, recLine, rec); err != nil {
				return err
			}
		}
		rec = rec[:0]
		recStart, recLine, blank = end, line, true
		return nil
	}
	for pos < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.ReadAt(buf[:min(int64(chunk), size-pos)], pos)
		if n == 0 && err != nil {
			return fmt.Errorf("%s: reading at byte %d: %w", s.uri, pos, err)
		}
		b := buf[:n]
		segStart := 0
		for i, c := range b {
			if c == '\n' {
				line++
			}
			if s.json {
				switch {
				case inQuote:
					if escaped {
						escaped = false
					} else if c == '\\' {
						escaped = true
					} else if c == '"' {
						inQuote = false
					}
					continue
				case c == '"':
					inQuote, blank = true, false
					continue
				case c == '{' || c == '[':
					depth++
				case c == '}' || c == ']':
					depth--
				}
			} else {
				// CSV: a quote opens a quoted field only at the field's
				// start; inside one, "" is a quote and a lone " closes it.
				switch {
				case inQuote:
					if c == '"' {
						inQuote, closed = false, true
					}
					continue
				case c == '"':
					inQuote = closed || fieldStart
					closed, fieldStart, blank = false, false, false
					continue
				}
				closed = false
				fieldStart = c == s.comma || c == '\n'
			}
			switch c {
			case '\n':
				if s.json && depth > 0 {
					continue
				}
				if s.keep {
					rec = append(rec, b[segStart:i+1]...)
				}
				segStart = i + 1
				if err := emit(pos + int64(i) + 1); err != nil {
					return err
				}
			case ' ', '\t', '\r':
			default:
				blank = false
			}
		}
		if s.keep {
			rec = append(rec, b[segStart:]...)
		}
		pos += int64(n)
		if pos-recStart > s.maxRec {
			return BadInput(s.uri, fmt.Sprintf("line %d", recLine),
				fmt.Errorf("record is longer than %d bytes (unterminated quote or bracket? see option %s)", s.maxRec, OptMaxRecordBytes))
		}
	}
	return emit(size)
}

// blockCutter groups records into blocks of about target bytes.
type blockCutter struct {
	target int64
	blocks []Block
	lines  []int64
	open   bool
}

func (c *blockCutter) add(start, end, line int64) {
	if !c.open {
		c.blocks = append(c.blocks, Block{Offset: start})
		c.lines = append(c.lines, line)
		c.open = true
	}
	b := &c.blocks[len(c.blocks)-1]
	b.Rows++
	b.Length = end - b.Offset
	if b.Length >= c.target {
		c.open = false
	}
}

// readRange reads a block's bytes.
func readRange(f io.ReaderAt, uri string, off, n int64) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil && (!errors.Is(err, io.EOF) || n != 0) {
		if errors.Is(err, io.EOF) {
			return nil, BadInput(uri, fmt.Sprintf("bytes %d..%d", off, off+n), errors.New("file is shorter than when it was inspected"))
		}
		return nil, fmt.Errorf("%s: reading bytes %d..%d: %w", uri, off, off+n, err)
	}
	return buf, nil
}

// checkUTF8 rejects string columns holding invalid UTF-8 (a Latin-1 file
// read as text): Arrow strings must be UTF-8, and clients fail on them later
// with no hint of where. first is the block's first line.
func checkUTF8(uri string, first int64, rec arrow.RecordBatch) error {
	for i, col := range rec.Columns() {
		s, ok := col.(*array.String)
		if !ok || utf8.Valid(s.ValueBytes()) {
			continue
		}
		for r := 0; r < s.Len(); r++ {
			if !utf8.ValidString(s.Value(r)) {
				return BadInput(uri, fmt.Sprintf("record %d of the block starting at line %d, column %q", r+1, first, rec.ColumnName(i)),
					fmt.Errorf("invalid UTF-8 in %q", truncate(s.Value(r), 64)))
			}
		}
	}
	return nil
}
