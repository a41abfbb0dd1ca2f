package shard

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/metadata"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// Parquet reads Parquet files with arrow-go's pqarrow. A block is a row group.
type Parquet struct{}

// Name implements Format.
func (Parquet) Name() string { return "parquet" }

type parquetState struct {
	md       *metadata.FileMetaData
	manifest *pqarrow.SchemaManifest
}

func sectionOf(f File) *io.SectionReader { return io.NewSectionReader(f, 0, f.Size()) }

// Inspect implements Format.
func (Parquet) Inspect(ctx context.Context, f File, info FileInfo, _ map[string]string) (*FileMeta, error) {
	return guard(info.URI, "footer", func() (*FileMeta, error) {
		rdr, err := file.NewParquetReader(sectionOf(f))
		if err != nil {
			return nil, BadInput(info.URI, "footer", err)
		}
		md := rdr.MetaData()
		if md.IsSetEncryptionAlgorithm() {
			return nil, &InputError{File: info.URI, Where: "footer", Class: ErrUnsupported,
				Err: errors.New("encrypted Parquet files are not supported")}
		}
		manifest, err := pqarrow.NewSchemaManifest(md.Schema, md.KeyValueMetadata(), &pqarrow.ArrowReadProperties{})
		if err != nil {
			return nil, BadInput(info.URI, "schema", err)
		}
		sc, err := pqarrow.FromParquet(md.Schema, &pqarrow.ArrowReadProperties{}, md.KeyValueMetadata())
		if err != nil {
			return nil, BadInput(info.URI, "schema", err)
		}
		meta := &FileMeta{Info: info, Schema: sc, State: &parquetState{md: md, manifest: manifest}}
		for i := 0; i < md.NumRowGroups(); i++ {
			rg := md.RowGroup(i)
			b := Block{Rows: rg.NumRows()}
			if rg.NumColumns() > 0 {
				first, err := rg.ColumnChunk(0)
				if err != nil {
					return nil, BadInput(info.URI, fmt.Sprintf("row group %d", i), err)
				}
				b.Offset = first.FileOffset()
				if first.HasDictionaryPage() && first.DictionaryPageOffset() > 0 {
					b.Offset = min(b.Offset, first.DictionaryPageOffset())
				} else if first.DataPageOffset() > 0 {
					b.Offset = min(b.Offset, first.DataPageOffset())
				}
				b.Length = rg.TotalCompressedSize()
			}
			if b.Rows < 0 {
				return nil, BadInput(info.URI, fmt.Sprintf("row group %d", i), fmt.Errorf("negative row count %d", b.Rows))
			}
			meta.Blocks = append(meta.Blocks, b)
		}
		return meta, nil
	})
}

// leafColumns returns the Parquet leaf column indices of the named top-level
// fields, in the order named.
func leafColumns(m *pqarrow.SchemaManifest, sc *arrow.Schema, names []string) ([]int, error) {
	var leaves []int
	var walk func(f *pqarrow.SchemaField)
	walk = func(f *pqarrow.SchemaField) {
		if f.IsLeaf() {
			leaves = append(leaves, f.ColIndex)
		}
		for i := range f.Children {
			walk(&f.Children[i])
		}
	}
	if names == nil {
		for i := range m.Fields {
			walk(&m.Fields[i])
		}
		return leaves, nil
	}
	for _, n := range names {
		idx := sc.FieldIndices(n)
		if len(idx) == 0 {
			return nil, fmt.Errorf("%w: no column %q", ErrInvalid, n)
		}
		walk(&m.Fields[idx[0]])
	}
	return leaves, nil
}

// ReadBlock implements Format.
func (Parquet) ReadBlock(ctx context.Context, f File, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	where := fmt.Sprintf("row group %d", block)
	if b := meta.Blocks[block]; b.Length > 0 {
		where = fmt.Sprintf("row group %d (bytes %d..%d)", block, b.Offset, b.Offset+b.Length)
	}
	return guard(meta.Info.URI, where, func() (arrow.RecordBatch, error) {
		st := meta.State.(*parquetState)
		rdr, err := file.NewParquetReader(sectionOf(f), file.WithMetadata(st.md),
			file.WithReadProps(parquet.NewReaderProperties(mem)))
		if err != nil {
			return nil, BadInput(meta.Info.URI, where, err)
		}
		// BatchSize 0: the whole row group comes back as one record batch.
		fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{}, mem)
		if err != nil {
			return nil, BadInput(meta.Info.URI, where, err)
		}
		leaves, err := leafColumns(st.manifest, meta.Schema, columns)
		if err != nil {
			return nil, err
		}
		if meta.Blocks[block].Rows == 0 || len(leaves) == 0 {
			return emptyBatch(meta.Schema, columns, mem)
		}
		rr, err := fr.GetRecordReader(ctx, leaves, []int{block})
		if err != nil {
			return nil, BadInput(meta.Info.URI, where, err)
		}
		defer rr.Release()
		rec, err := rr.Read()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, BadInput(meta.Info.URI, where, err)
		}
		if rec == nil {
			return nil, BadInput(meta.Info.URI, where, errors.New("row group yielded no rows"))
		}
		if rec.NumRows() != meta.Blocks[block].Rows {
			return nil, BadInput(meta.Info.URI, where,
				fmt.Errorf("row group holds %d rows, metadata says %d", rec.NumRows(), meta.Blocks[block].Rows))
		}
		rec.Retain()
		return reorder(rec, columns)
	})
}

// RowPlace implements RowNamer.
func (Parquet) RowPlace(meta *FileMeta, block int, row int64) (string, string) {
	return meta.Info.URI, fmt.Sprintf("row group %d, row %d", block, row)
}
