package shard

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// benchFormat measures Inspect (the one scan) and reading every block of the
// conformance table written in each format, in MB/s of file.
func benchFormat(b *testing.B, format, ext string, write func(testing.TB, string, arrow.RecordBatch) arrow.RecordBatch) {
	rec := confTable(b, memory.DefaultAllocator)
	defer rec.Release()
	path := filepath.Join(b.TempDir(), "data"+ext)
	write(b, path, rec).Release()
	st, _ := os.Stat(path)
	store, _ := NewLocalStore([]string{filepath.Dir(path)})
	spec := Spec{Format: format, URIs: []string{path}, Options: map[string]string{OptBlockBytes: "65536"}}
	b.Run("inspect", func(b *testing.B) {
		b.SetBytes(st.Size())
		for b.Loop() {
			if _, err := Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()}); err != nil {
				b.Fatal(err)
			}
		}
	})
	ds, err := Open(context.Background(), spec, OpenOptions{Store: store, Formats: DefaultFormats()})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("read", func(b *testing.B) {
		b.SetBytes(st.Size())
		for b.Loop() {
			for i := range ds.Blocks {
				r, err := ds.ReadBlock(context.Background(), i, memory.DefaultAllocator)
				if err != nil {
					b.Fatal(err)
				}
				r.Release()
			}
		}
	})
}

func BenchmarkCSV(b *testing.B)  { benchFormat(b, "csv", ".csv", writeCSVFile) }
func BenchmarkJSON(b *testing.B) { benchFormat(b, "json", ".jsonl", writeJSONFile) }
