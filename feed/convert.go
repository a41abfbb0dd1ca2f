package feed

import (
	"github.com/loaderd/loaderd/decode"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/shard"
)

// Conversions between the wire types and the domain's, in one place.

func specFromProto(d *feedv1.DatasetSpec) shard.Spec {
	s := shard.Spec{
		Format:  d.GetFormat(),
		URIs:    d.GetUris(),
		Columns: d.GetColumns(),
		Options: d.GetOptions(),

		Partitions: int(d.GetPartitions()),
	}
	if sh := d.GetShuffle(); sh != nil {
		s.Shuffle = &shard.Shuffle{Seed: sh.GetSeed(), WindowRows: sh.GetWindowRows()}
	}
	if d.GetOnError() == feedv1.OnError_ON_ERROR_SKIP {
		s.OnError = shard.Skip
	}
	if im := d.GetImage(); im != nil {
		s.Image = imageFromProto(im)
	}
	return s
}

func imageFromProto(im *feedv1.ImageDecode) *decode.Spec {
	s := &decode.Spec{Column: im.GetColumn(), Seed: im.GetSeed()}
	for _, t := range im.GetTransforms() {
		var op decode.Op
		switch o := t.GetOp().(type) {
		case *feedv1.ImageTransform_RandomResizedCrop:
			c := o.RandomResizedCrop
			op = decode.Op{Kind: decode.RandomResizedCrop, Height: int(c.GetHeight()), Width: int(c.GetWidth()),
				Scale: [2]float64{c.GetScaleMin(), c.GetScaleMax()}, Ratio: [2]float64{c.GetRatioMin(), c.GetRatioMax()}}
		case *feedv1.ImageTransform_Resize:
			op = decode.Op{Kind: decode.Resize, Height: int(o.Resize.GetHeight()), Width: int(o.Resize.GetWidth())}
		case *feedv1.ImageTransform_CenterCrop:
			op = decode.Op{Kind: decode.CenterCrop, Height: int(o.CenterCrop.GetHeight()), Width: int(o.CenterCrop.GetWidth())}
		case *feedv1.ImageTransform_RandomHorizontalFlip:
			op = decode.Op{Kind: decode.RandomHorizontalFlip, P: o.RandomHorizontalFlip.GetP()}
		case *feedv1.ImageTransform_Normalize:
			op = decode.Op{Kind: decode.Normalize, Mean: o.Normalize.GetMean(), Std: o.Normalize.GetStd()}
		}
		s.Ops = append(s.Ops, op)
	}
	return s
}

func imageToProto(s *decode.Spec) *feedv1.ImageDecode {
	im := &feedv1.ImageDecode{Column: s.Column, Seed: s.Seed}
	for _, op := range s.Ops {
		t := &feedv1.ImageTransform{}
		h, w := int32(op.Height), int32(op.Width)
		switch op.Kind {
		case decode.RandomResizedCrop:
			t.Op = &feedv1.ImageTransform_RandomResizedCrop{RandomResizedCrop: &feedv1.ImageRandomResizedCrop{
				Height: h, Width: w, ScaleMin: op.Scale[0], ScaleMax: op.Scale[1], RatioMin: op.Ratio[0], RatioMax: op.Ratio[1]}}
		case decode.Resize:
			t.Op = &feedv1.ImageTransform_Resize{Resize: &feedv1.ImageResize{Height: h, Width: w}}
		case decode.CenterCrop:
			t.Op = &feedv1.ImageTransform_CenterCrop{CenterCrop: &feedv1.ImageCenterCrop{Height: h, Width: w}}
		case decode.RandomHorizontalFlip:
			t.Op = &feedv1.ImageTransform_RandomHorizontalFlip{RandomHorizontalFlip: &feedv1.ImageRandomHorizontalFlip{P: op.P}}
		case decode.Normalize:
			t.Op = &feedv1.ImageTransform_Normalize{Normalize: &feedv1.ImageNormalize{Mean: op.Mean, Std: op.Std}}
		}
		im.Transforms = append(im.Transforms, t)
	}
	return im
}

func specToProto(s shard.Spec) *feedv1.DatasetSpec {
	d := &feedv1.DatasetSpec{Format: s.Format, Uris: s.URIs, Columns: s.Columns, Options: s.Options, Partitions: int32(s.Partitions)}
	if s.Shuffle != nil {
		d.Shuffle = &feedv1.Shuffle{Seed: s.Shuffle.Seed, WindowRows: s.Shuffle.WindowRows}
	}
	if s.OnError == shard.Skip {
		d.OnError = feedv1.OnError_ON_ERROR_SKIP
	}
	if s.Image != nil {
		d.Image = imageToProto(s.Image)
	}
	return d
}

func modeFromProto(m feedv1.ShardMode) shard.Mode {
	if m == feedv1.ShardMode_SHARD_MODE_EXACT {
		return shard.Exact
	}
	return shard.Even
}

func modeToProto(m shard.Mode) feedv1.ShardMode {
	if m == shard.Exact {
		return feedv1.ShardMode_SHARD_MODE_EXACT
	}
	return feedv1.ShardMode_SHARD_MODE_EVEN
}

func transportFromProto(t feedv1.Transport) Transport {
	switch t {
	case feedv1.Transport_TRANSPORT_GRPC:
		return TransportGRPC
	case feedv1.Transport_TRANSPORT_SHM:
		return TransportShm
	}
	return TransportAuto
}

func transportToProto(t Transport) feedv1.Transport {
	switch t {
	case TransportGRPC:
		return feedv1.Transport_TRANSPORT_GRPC
	case TransportShm:
		return feedv1.Transport_TRANSPORT_SHM
	}
	return feedv1.Transport_TRANSPORT_UNSPECIFIED
}
