package feed

import (
	"bytes"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// encodeSchema returns the Arrow IPC schema message of sc.
func encodeSchema(sc *arrow.Schema) ([]byte, error) {
	p := ipc.GetSchemaPayload(sc, memory.DefaultAllocator)
	defer p.Release()
	var buf bytes.Buffer
	if _, err := p.WritePayload(&buf); err != nil {
		return nil, fmt.Errorf("encoding schema: %w", err)
	}
	return buf.Bytes(), nil
}

// batchPayload returns the Arrow IPC payload of rec, which references rec's
// buffers without copying them, and the size of the encapsulated message it
// writes. The caller releases the payload.
func batchPayload(rec arrow.RecordBatch, mem memory.Allocator) (ipc.Payload, int64, error) {
	p, err := ipc.GetRecordBatchPayload(rec, ipc.WithAllocator(mem))
	if err != nil {
		return ipc.Payload{}, 0, fmt.Errorf("encoding batch: %w", err)
	}
	var n countingWriter // lengths only: no byte is copied
	if _, err := p.WritePayload(&n); err != nil {
		p.Release()
		return ipc.Payload{}, 0, fmt.Errorf("encoding batch: %w", err)
	}
	return p, int64(n), nil
}

type countingWriter int64

func (c *countingWriter) Write(b []byte) (int, error) {
	*c += countingWriter(len(b))
	return len(b), nil
}

// decoder turns the stream's IPC messages back into record batches: one
// arrow IPC reader fed the schema once and then each batch message in turn.
type decoder struct {
	src  msgSource
	r    *ipc.Reader
	mem  memory.Allocator
	head []byte
}

// msgSource serves the bytes of one message at a time to the IPC reader.
type msgSource struct{ cur []byte }

func (m *msgSource) Read(p []byte) (int, error) {
	if len(m.cur) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, m.cur)
	m.cur = m.cur[n:]
	return n, nil
}

func newDecoder(schema []byte, mem memory.Allocator) *decoder {
	return &decoder{head: schema, mem: mem}
}

// decode returns the record batch of one IPC record-batch message; the caller
// releases it.
func (d *decoder) decode(msg []byte) (arrow.RecordBatch, error) {
	if d.r == nil {
		d.src.cur = append(d.head, msg...)
		r, err := ipc.NewReader(&d.src, ipc.WithAllocator(d.mem))
		if err != nil {
			return nil, fmt.Errorf("decoding schema: %w", err)
		}
		d.r = r
	} else {
		d.src.cur = msg
	}
	if !d.r.Next() {
		if err := d.r.Err(); err != nil {
			return nil, fmt.Errorf("decoding batch: %w", err)
		}
		return nil, fmt.Errorf("decoding batch: no record in message")
	}
	rec := d.r.RecordBatch()
	rec.Retain()
	return rec, nil
}

func (d *decoder) close() {
	if d.r != nil {
		d.r.Release()
	}
}

// decodeSchema reads an Arrow IPC schema message.
func decodeSchema(b []byte, mem memory.Allocator) (*arrow.Schema, error) {
	r, err := ipc.NewReader(bytes.NewReader(b), ipc.WithAllocator(mem))
	if err != nil {
		return nil, fmt.Errorf("decoding schema: %w", err)
	}
	defer r.Release()
	return r.Schema(), nil
}
