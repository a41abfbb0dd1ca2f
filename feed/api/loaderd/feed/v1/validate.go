package feedv1

// Hand-written request validation, run by go-grpc-middleware's validator
// interceptor on every request before a handler sees it. It checks shape and
// bounds only; whether files exist is the daemon's business.

import (
	"errors"
	"fmt"
)

// Bounds on request fields, so one request cannot ask for unbounded work.
const (
	MaxURIs       = 100_000
	MaxURILen     = 4096
	MaxColumns    = 10_000
	MaxWorldSize  = 1 << 20
	MaxBatchSize  = 1 << 24
	MaxOptions    = 256
	MaxOptionSize = 64 << 10
	MaxJobName    = 256
	// Image transforms: how many, and the largest output side.
	MaxImageTransforms = 64
	MaxImageSide       = 16384
)

// Validate implements the validator interceptor's interface.
func (d *DatasetSpec) Validate() error {
	if d == nil {
		return errors.New("dataset is required")
	}
	if d.GetFormat() == "" {
		return errors.New("dataset.format is required")
	}
	if n := len(d.GetUris()); n == 0 || n > MaxURIs {
		return fmt.Errorf("dataset.uris: %d paths, want 1..%d", n, MaxURIs)
	}
	for _, u := range d.GetUris() {
		if u == "" || len(u) > MaxURILen {
			return fmt.Errorf("dataset.uris: path of %d bytes, want 1..%d", len(u), MaxURILen)
		}
	}
	if len(d.GetColumns()) > MaxColumns {
		return fmt.Errorf("dataset.columns: %d columns, at most %d", len(d.GetColumns()), MaxColumns)
	}
	if len(d.GetOptions()) > MaxOptions {
		return fmt.Errorf("dataset.options: %d options, at most %d", len(d.GetOptions()), MaxOptions)
	}
	for k, v := range d.GetOptions() {
		if len(k)+len(v) > MaxOptionSize {
			return fmt.Errorf("dataset.options[%q]: larger than %d bytes", k, MaxOptionSize)
		}
	}
	if d.GetShuffle().GetWindowRows() < 0 {
		return errors.New("dataset.shuffle.window_rows must not be negative")
	}
	if im := d.GetImage(); im != nil {
		return im.Validate()
	}
	return nil
}

// Validate checks an image decode's shape and bounds; the daemon checks the
// meaning (ratios, the output size being fixed) when it compiles it.
func (im *ImageDecode) Validate() error {
	if im.GetColumn() == "" || len(im.GetColumn()) > MaxURILen {
		return errors.New("dataset.image.column is required")
	}
	if n := len(im.GetTransforms()); n > MaxImageTransforms {
		return fmt.Errorf("dataset.image.transforms: %d, at most %d", n, MaxImageTransforms)
	}
	size := func(i int, h, w int32) error {
		if h < 0 || w < 0 || h > MaxImageSide || w > MaxImageSide {
			return fmt.Errorf("dataset.image.transforms[%d]: size %dx%d, want 1..%d", i, h, w, MaxImageSide)
		}
		return nil
	}
	for i, t := range im.GetTransforms() {
		var err error
		switch op := t.GetOp().(type) {
		case *ImageTransform_RandomResizedCrop:
			err = size(i, op.RandomResizedCrop.GetHeight(), op.RandomResizedCrop.GetWidth())
		case *ImageTransform_Resize:
			err = size(i, op.Resize.GetHeight(), op.Resize.GetWidth())
		case *ImageTransform_CenterCrop:
			err = size(i, op.CenterCrop.GetHeight(), op.CenterCrop.GetWidth())
		case *ImageTransform_RandomHorizontalFlip:
		case *ImageTransform_Normalize:
			if len(op.Normalize.GetMean()) > 3 || len(op.Normalize.GetStd()) > 3 {
				err = fmt.Errorf("dataset.image.transforms[%d]: normalize takes at most 3 means and stds", i)
			}
		default:
			err = fmt.Errorf("dataset.image.transforms[%d] is empty", i)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Validate implements the validator interceptor's interface.
func (r *DescribeRequest) Validate() error { return r.GetDataset().Validate() }

// Validate implements the validator interceptor's interface.
func (r *StreamRequest) Validate() error {
	switch k := r.GetKind().(type) {
	case *StreamRequest_Open:
		return k.Open.Validate()
	case *StreamRequest_Ack:
		if k.Ack.GetSeq() < 0 {
			return errors.New("ack.seq must not be negative")
		}
		return nil
	default:
		return errors.New("stream request is empty")
	}
}

// Validate implements the validator interceptor's interface.
func (o *OpenStream) Validate() error {
	if err := o.validateShare(); err != nil {
		return err
	}
	if b := o.GetBatchSize(); b < 1 || b > MaxBatchSize {
		return fmt.Errorf("batch_size %d, want 1..%d", b, MaxBatchSize)
	}
	if o.GetStartSample() < 0 {
		return fmt.Errorf("start_sample %d is negative", o.GetStartSample())
	}
	if len(o.GetJob()) > MaxJobName {
		return fmt.Errorf("job name longer than %d bytes", MaxJobName)
	}
	return nil
}

// validateShare checks what names a rank's share of an epoch: the fields a
// PlanRequest uses.
func (o *OpenStream) validateShare() error {
	if err := o.GetDataset().Validate(); err != nil {
		return err
	}
	if w := o.GetWorldSize(); w < 1 || w > MaxWorldSize {
		return fmt.Errorf("world_size %d, want 1..%d", w, MaxWorldSize)
	}
	if r := o.GetRank(); r < 0 || r >= o.GetWorldSize() {
		return fmt.Errorf("rank %d is outside world size %d", r, o.GetWorldSize())
	}
	if o.GetEpoch() < 0 {
		return fmt.Errorf("epoch %d is negative", o.GetEpoch())
	}
	return nil
}

// Validate implements the validator interceptor's interface.
func (r *PlanRequest) Validate() error {
	if r.GetOpen() == nil {
		return errors.New("plan request names no share (open is empty)")
	}
	return r.GetOpen().validateShare()
}

// MaxWritePath bounds an output directory.
const MaxWritePath = 4096

// Validate implements the validator interceptor's interface.
func (r *WriteRequest) Validate() error {
	if err := r.GetDataset().Validate(); err != nil {
		return err
	}
	if r.GetDataset().GetPartitions() < 0 || r.GetRowsPerFile() < 0 {
		return errors.New("partitions and rows_per_file must not be negative")
	}
	if d := r.GetDir(); d == "" || len(d) > MaxWritePath {
		return fmt.Errorf("dir: %d bytes, want 1..%d", len(d), MaxWritePath)
	}
	if len(r.GetJob()) > MaxJobName {
		return fmt.Errorf("job: over %d bytes", MaxJobName)
	}
	return nil
}

// Validate implements the validator interceptor's interface.
func (r *GroupByRequest) Validate() error {
	if err := r.GetDataset().Validate(); err != nil {
		return err
	}
	if r.GetKey() == "" {
		return errors.New("key is required")
	}
	return nil
}

// MaxUploadChunk bounds one chunk of an upload.
const MaxUploadChunk = 4 << 20

// Validate implements the validator interceptor's interface (run on every
// message of the Upload stream).
func (r *UploadRequest) Validate() error {
	switch p := r.GetPart().(type) {
	case *UploadRequest_Header:
		if p.Header.GetSize() < 1 {
			return fmt.Errorf("upload header: size %d, want a positive size", p.Header.GetSize())
		}
		if len(p.Header.GetSha256()) != 64 {
			return errors.New("upload header: sha256 must be 64 hex digits")
		}
		return nil
	case *UploadRequest_Chunk:
		if n := len(p.Chunk); n == 0 || n > MaxUploadChunk {
			return fmt.Errorf("upload chunk of %d bytes, want 1..%d", n, MaxUploadChunk)
		}
		return nil
	default:
		return errors.New("upload request is empty")
	}
}
