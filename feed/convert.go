package feed

import (
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
	return s
}

func specToProto(s shard.Spec) *feedv1.DatasetSpec {
	d := &feedv1.DatasetSpec{Format: s.Format, Uris: s.URIs, Columns: s.Columns, Options: s.Options, Partitions: int32(s.Partitions)}
	if s.Shuffle != nil {
		d.Shuffle = &feedv1.Shuffle{Seed: s.Shuffle.Seed, WindowRows: s.Shuffle.WindowRows}
	}
	if s.OnError == shard.Skip {
		d.OnError = feedv1.OnError_ON_ERROR_SKIP
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
