package shard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Images reads an image folder as torchvision's ImageFolder does: each
// subfolder of the root is a class, and an image's label is the index of its
// class in the sorted class names. Rows are (image bytes, label, path); the
// images are decoded later, by the dataset's decode_image transforms.
//
// A block is a run of consecutive image files (about BlockBytes of them), so
// the epoch plan shuffles groups of files and a read fetches many at once.
// Unlike ImageFolder, hidden folders (".ipynb_checkpoints") are not classes,
// and files of other types are left out rather than failing.
type Images struct{}

// Sizes of an image folder's blocks.
const (
	ImageBlockBytes = 4 << 20
	ImageBlockFiles = 256
)

// ImageExtensions are the file extensions read as images (any case).
var imageExtensions = []string{".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

// ClassesKey is the schema metadata key under which image datasets list
// their class names (a JSON array, index = label).
const ClassesKey = "loaderd.classes"

// Name implements Format.
func (Images) Name() string { return "images" }

type imagesState struct {
	files  []FileInfo
	labels []int64
	starts []int // block i is files[starts[i]:starts[i+1]]
}

var imagesSchema = []arrow.Field{
	{Name: "image", Type: arrow.BinaryTypes.Binary},
	{Name: "label", Type: arrow.PrimitiveTypes.Int64},
	{Name: "path", Type: arrow.BinaryTypes.String},
}

// Inspect implements Format; image folders are read as trees.
func (Images) Inspect(_ context.Context, _ File, info FileInfo, _ map[string]string) (*FileMeta, error) {
	return nil, Invalidf("%s: image datasets read a directory of class folders", info.URI)
}

// ReadBlock implements Format; image folders are read as trees.
func (Images) ReadBlock(context.Context, File, *FileMeta, int, []string, memory.Allocator) (arrow.RecordBatch, error) {
	return nil, Invalidf("image datasets are read as directory trees")
}

// InspectTree implements TreeFormat.
func (Images) InspectTree(_ context.Context, root FileInfo, files []FileInfo, _ map[string]string) (*FileMeta, error) {
	type entry struct {
		FileInfo
		class string
	}
	var imgs []entry
	classes := map[string]bool{}
	for _, f := range files {
		rel := strings.TrimPrefix(f.URI, root.URI+"/")
		parts := strings.Split(rel, "/")
		if len(parts) < 2 || slices.ContainsFunc(parts, func(p string) bool { return strings.HasPrefix(p, ".") }) {
			continue // not in a class folder, or hidden
		}
		if !slices.Contains(imageExtensions, strings.ToLower(path.Ext(f.URI))) {
			continue
		}
		imgs = append(imgs, entry{f, parts[0]})
		classes[parts[0]] = true
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("%w: %s has no images in class folders (want ROOT/CLASS/IMAGE with extension %s)",
			ErrNotFound, root.URI, strings.Join(imageExtensions, ", "))
	}
	names := make([]string, 0, len(classes))
	for c := range classes {
		names = append(names, c)
	}
	slices.Sort(names)
	index := make(map[string]int64, len(names))
	for i, c := range names {
		index[c] = int64(i)
	}
	// torchvision's order: by class, then by path within the class.
	slices.SortStableFunc(imgs, func(a, b entry) int {
		if d := index[a.class] - index[b.class]; d != 0 {
			return int(d)
		}
		return strings.Compare(a.URI, b.URI)
	})
	st := &imagesState{}
	cl, _ := json.Marshal(names) // cannot fail: strings
	md := arrow.NewMetadata([]string{ClassesKey}, []string{string(cl)})
	meta := &FileMeta{Info: root, Schema: arrow.NewSchema(imagesSchema, &md), State: st}
	var b Block
	for i, e := range imgs {
		if b.Rows > 0 && (b.Length+e.Size > ImageBlockBytes || b.Rows >= ImageBlockFiles) {
			meta.Blocks = append(meta.Blocks, b)
			b = Block{}
		}
		if b.Rows == 0 {
			st.starts = append(st.starts, i)
			b.Offset = int64(i) // the block's first file, in the tree's order
		}
		b.Rows++
		b.Length += e.Size
		st.files = append(st.files, e.FileInfo)
		st.labels = append(st.labels, index[e.class])
	}
	meta.Blocks = append(meta.Blocks, b)
	st.starts = append(st.starts, len(imgs))
	return meta, nil
}

// ReadTreeBlock implements TreeFormat: each file's bytes go straight into
// the block's binary column.
func (Images) ReadTreeBlock(ctx context.Context, store Store, meta *FileMeta, block int, columns []string, mem memory.Allocator) (arrow.RecordBatch, error) {
	st := meta.State.(*imagesState)
	lo, hi := st.starts[block], st.starts[block+1]
	files := st.files[lo:hi]
	var total int64
	for _, f := range files {
		total += f.Size
	}
	if total > 1<<31-1 {
		return nil, BadInput(meta.Info.URI, fmt.Sprintf("block %d", block), errors.New("block over 2 GiB"))
	}
	data := memory.NewResizableBuffer(mem)
	data.Resize(int(total))
	offsets := memory.NewResizableBuffer(mem)
	offsets.Resize((len(files) + 1) * 4)
	offs := arrow.Int32Traits.CastFromBytes(offsets.Bytes())
	release := func() { data.Release(); offsets.Release() }
	var at int64
	for i, f := range files {
		if err := ctx.Err(); err != nil {
			release()
			return nil, err
		}
		offs[i] = int32(at)
		if err := readWhole(ctx, store, f, data.Bytes()[at:at+f.Size]); err != nil {
			release()
			return nil, err
		}
		at += f.Size
	}
	offs[len(files)] = int32(at)
	d := array.NewData(arrow.BinaryTypes.Binary, len(files), []*memory.Buffer{nil, offsets, data}, nil, 0, 0)
	images := array.NewBinaryData(d)
	d.Release()
	release()
	labels := array.NewInt64Builder(mem)
	labels.AppendValues(st.labels[lo:hi], nil)
	paths := array.NewStringBuilder(mem)
	for _, f := range files {
		paths.Append(f.URI)
	}
	cols := []arrow.Array{images, labels.NewArray(), paths.NewArray()}
	labels.Release()
	paths.Release()
	rec := array.NewRecordBatch(meta.Schema, cols, int64(len(files)))
	for _, c := range cols {
		c.Release()
	}
	return reorder(rec, columns)
}

// readWhole reads all of f into buf (len(buf) == f.Size).
func readWhole(ctx context.Context, store Store, f FileInfo, buf []byte) error {
	h, err := store.Open(ctx, f)
	if err != nil {
		return BadInput(f.URI, "", err)
	}
	defer h.Close()
	if n, err := h.ReadAt(buf, 0); n < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("read %d of %d bytes: the file changed since it was listed", n, len(buf))
		}
		return BadInput(f.URI, "", err)
	}
	return nil
}

// RowPlace implements RowNamer: the image file itself.
func (Images) RowPlace(meta *FileMeta, block int, row int64) (string, string) {
	st := meta.State.(*imagesState)
	return st.files[st.starts[block]+int(row)].URI, ""
}
