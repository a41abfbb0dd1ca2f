package decode

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// TensorName is the Arrow canonical extension name of fixed-shape tensors:
// pyarrow reads such a column as pa.FixedShapeTensorType, and numpy views it
// as one n-d array without a copy. arrow-go v18 does not ship the type.
const TensorName = "arrow.fixed_shape_tensor"

// TensorType is arrow.fixed_shape_tensor: each value is a row-major tensor of
// Shape, stored as a fixed-size list of its elements.
type TensorType struct {
	arrow.ExtensionBase
	Shape []int64
}

// NewTensorType returns the tensor type of value elements and shape.
func NewTensorType(value arrow.DataType, shape []int64) *TensorType {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return &TensorType{ExtensionBase: arrow.ExtensionBase{Storage: arrow.FixedSizeListOf(int32(n), value)}, Shape: slices.Clone(shape)}
}

// ArrayType implements arrow.ExtensionType.
func (*TensorType) ArrayType() reflect.Type { return reflect.TypeOf(TensorArray{}) }

// ExtensionName implements arrow.ExtensionType.
func (*TensorType) ExtensionName() string { return TensorName }

func (t *TensorType) String() string {
	return fmt.Sprintf("fixed_shape_tensor<%s, %v>", t.Storage.(*arrow.FixedSizeListType).Elem(), t.Shape)
}

type tensorMeta struct {
	Shape []int64 `json:"shape"`
}

// Serialize implements arrow.ExtensionType: the canonical JSON metadata.
func (t *TensorType) Serialize() string {
	b, _ := json.Marshal(tensorMeta{Shape: t.Shape}) // cannot fail: a slice of ints
	return string(b)
}

// Deserialize implements arrow.ExtensionType.
func (*TensorType) Deserialize(storage arrow.DataType, data string) (arrow.ExtensionType, error) {
	var m tensorMeta
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		return nil, fmt.Errorf("%s metadata %q: %w", TensorName, data, err)
	}
	fl, ok := storage.(*arrow.FixedSizeListType)
	if !ok {
		return nil, fmt.Errorf("%s storage must be a fixed-size list, got %s", TensorName, storage)
	}
	t := NewTensorType(fl.Elem(), m.Shape)
	if !arrow.TypeEqual(t.Storage, storage) {
		return nil, fmt.Errorf("%s shape %v does not fit storage %s", TensorName, m.Shape, storage)
	}
	return t, nil
}

// ExtensionEquals implements arrow.ExtensionType.
func (t *TensorType) ExtensionEquals(o arrow.ExtensionType) bool {
	u, ok := o.(*TensorType)
	return ok && slices.Equal(t.Shape, u.Shape) && arrow.TypeEqual(t.Storage, u.Storage)
}

// TensorArray is an array of TensorType.
type TensorArray struct {
	array.ExtensionArrayBase
}

// OutputType is the Arrow type of the pipeline's output column.
func (p *Pipeline) OutputType() *TensorType {
	if p.float {
		return NewTensorType(arrow.PrimitiveTypes.Float32, p.Shape())
	}
	return NewTensorType(arrow.PrimitiveTypes.Uint8, p.Shape())
}

// TensorArray wraps n samples' outputs, laid out back to back in buf (which
// the array takes a reference to), as an array of the pipeline's output type,
// without copying.
func (p *Pipeline) TensorArray(buf *memory.Buffer, n int) arrow.Array {
	t := p.OutputType()
	fl := t.Storage.(*arrow.FixedSizeListType)
	per := int(fl.Len())
	child := array.NewData(fl.Elem(), n*per, []*memory.Buffer{nil, buf}, nil, 0, 0)
	defer child.Release()
	list := array.NewData(fl, n, []*memory.Buffer{nil}, []arrow.ArrayData{child}, 0, 0)
	defer list.Release()
	storage := array.MakeFromData(list)
	defer storage.Release()
	return array.NewExtensionArrayWithStorage(t, storage)
}
