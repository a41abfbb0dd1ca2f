package feed

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/loaderd/loaderd/decode"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
)

// service implements feedv1.FeedServer. Handlers return domain errors; the
// server's interceptor maps them with toStatus.
type service struct {
	feedv1.UnimplementedFeedServer
	s *Server
}

func (v *service) Describe(ctx context.Context, req *feedv1.DescribeRequest) (*feedv1.DescribeResponse, error) {
	spec := specFromProto(req.GetDataset())
	ds, err := v.s.datasets.open(ctx, spec, v.s.log)
	if err != nil {
		return nil, err
	}
	schema, _, err := v.s.images(ds, spec, 0)
	if err != nil {
		return nil, err
	}
	sc, err := encodeSchema(schema)
	if err != nil {
		return nil, err
	}
	return &feedv1.DescribeResponse{
		ArrowSchema: sc, NumRows: ds.Rows, NumFiles: int64(len(ds.Files)),
		NumBlocks: int64(len(ds.Blocks)), Fingerprint: spec.Fingerprint(),
	}, nil
}

func (v *service) Version(context.Context, *feedv1.VersionRequest) (*feedv1.VersionResponse, error) {
	return &feedv1.VersionResponse{Version: v.s.opts.Version, GoVersion: runtime.Version()}, nil
}

func (v *service) Status(context.Context, *feedv1.StatusRequest) (*feedv1.StatusResponse, error) {
	now := time.Now()
	resp := &feedv1.StatusResponse{
		Version:       v.s.opts.Version,
		UptimeSeconds: now.Sub(v.s.started).Seconds(),
		Sessions:      v.s.sessions.status(now),
		Writes:        v.s.writes.status(),
		Plans:         v.s.sessions.plans(),
		Decoder:       decoderStatus(v.s.decoder, v.s.decoderChoice, v.s.gpus),
		Uploads:       uploadsStatus(v.s.uploads),
	}
	if c := v.s.cache; c != nil {
		st := c.Stats()
		resp.Cache = &feedv1.CacheStatus{
			BudgetBytes: c.Budget(), Bytes: st.Bytes.Load(), Hits: st.Hits.Load(), Misses: st.Misses.Load(),
			Evictions: st.Evictions.Load(), Rejections: st.Rejections.Load(), Loads: st.Loads.Load(),
			LoadedBytes: st.LoadedBytes.Load(), LoadSeconds: time.Duration(st.LoadNanos.Load()).Seconds(),
		}
	}
	if m := v.s.memory; m != nil {
		st := m.Stats()
		rss, peak := processRSS()
		resp.Memory = &feedv1.MemoryStatus{
			BudgetBytes: st.Budget, DataLimitBytes: st.Limit, InUseBytes: st.InUse, IdleBytes: st.Idle, ChargedBytes: st.Charged,
			ReservedBytes: st.Reserved, WaitSeconds: st.Waited.Seconds(), RssBytes: rss, PeakRssBytes: peak,
		}
	}
	la := v.s.sched.Stats()
	resp.Lookahead = &feedv1.LookaheadStatus{Waiting: int32(la.Waiting), Prepared: la.Prepared,
		Claimed: la.Claimed, Expired: la.Expired, Refused: la.Refused}
	return resp, nil
}

// share computes the epoch plan an OpenStream names and the rank's part of it.
func (v *service) share(ctx context.Context, open *feedv1.OpenStream) (*shard.Dataset, *shard.EpochPlan, *shard.RankPlan, error) {
	spec := specFromProto(open.GetDataset())
	ds, err := v.s.datasets.open(ctx, spec, v.s.log)
	if err != nil {
		return nil, nil, nil, err
	}
	plan, err := ds.EpochPlan(spec.Shuffle, open.GetEpoch(), int(open.GetWorldSize()), modeFromProto(open.GetMode()))
	if err != nil {
		return nil, nil, nil, err
	}
	rp, err := plan.Rank(int(open.GetRank()))
	if err != nil {
		return nil, nil, nil, err
	}
	return ds, plan, rp, nil
}

func (v *service) Plan(ctx context.Context, req *feedv1.PlanRequest) (*feedv1.PlanResponse, error) {
	ds, plan, rp, err := v.share(ctx, req.GetOpen())
	if err != nil {
		return nil, err
	}
	return &feedv1.PlanResponse{
		PlanFingerprint: ds.PlanFingerprint(plan), NumSamples: rp.Len(),
		PaddingSamples: rp.Padding(), TotalSamples: plan.Total(),
	}, nil
}

// request describes the session's epoch to the scheduler: what identifies
// its batches (so that a prepared epoch can be claimed), where its blocks
// come from, how to plan any epoch of it, and the images to decode (nil:
// none).
func (v *service) request(ds *shard.Dataset, spec shard.Spec, open *feedv1.OpenStream, images *prefetch.Images) prefetch.Request {
	rank, world, mode := int(open.GetRank()), int(open.GetWorldSize()), modeFromProto(open.GetMode())
	key := prefetch.EpochKey{
		Dataset: ds, Rank: rank, World: world, Mode: mode, Epoch: open.GetEpoch(),
		BatchSize: int(open.GetBatchSize()), DropLast: open.GetDropLast(),
	}
	if sh := spec.Shuffle; sh != nil {
		key.Shuffled, key.Seed, key.WindowRows = true, sh.Seed, sh.WindowRows
	}
	if spec.Image != nil {
		// Datasets are shared by specs that read alike; the images they
		// make differ.
		key.Extra = "image " + spec.Image.Fingerprint()
	}
	var src prefetch.Source = ds
	if v.s.cache != nil {
		src = v.s.cache.Blocks(ds)
	}
	return prefetch.Request{
		Key: key, Source: src, From: open.GetStartSample(),
		Plan: func(epoch int64) (*shard.RankPlan, error) {
			plan, err := ds.EpochPlan(spec.Shuffle, epoch, world, mode)
			if err != nil {
				return nil, err
			}
			return plan.Rank(rank)
		},
		Options: prefetch.Options{
			Ahead: v.s.opts.Ahead, ReadAhead: v.s.opts.ReadAhead, OnError: spec.OnError, Images: images,
		},
	}
}

// images returns the schema of a spec's batches and, when the spec decodes
// images, the stream's image stage for an epoch.
func (s *Server) images(ds *shard.Dataset, spec shard.Spec, epoch int64) (*arrow.Schema, *prefetch.Images, error) {
	if spec.Image == nil {
		return ds.Schema(), nil, nil
	}
	p, err := decode.Compile(*spec.Image)
	if err != nil {
		return nil, nil, shard.Invalidf("%v", err)
	}
	sc, col, err := prefetch.ImageSchema(ds.Schema(), spec.Image.Column, p)
	if err != nil {
		return nil, nil, err
	}
	return sc, &prefetch.Images{Column: col, Pipeline: p, Decoder: s.decoder, Epoch: epoch, Rows: ds}, nil
}

// whole streams a dataset as rank 0 of 1 in exact mode, epoch 0 (file
// order, or spec's shuffle), through the same stages as a session: block
// cache, memory budget, image decoding. Write and GroupBy read this way. spec
// is the request's: ds may have been opened by another spec that reads alike
// but shuffles or decodes images differently.
func (s *Server) whole(ctx context.Context, ds *shard.Dataset, spec shard.Spec, batchRows int) (*prefetch.Stream, error) {
	plan, err := ds.EpochPlan(spec.Shuffle, 0, 1, shard.Exact)
	if err != nil {
		return nil, err
	}
	rp, err := plan.Rank(0)
	if err != nil {
		return nil, err
	}
	_, images, err := s.images(ds, spec, 0)
	if err != nil {
		return nil, err
	}
	var src prefetch.Source = ds
	if s.cache != nil {
		src = s.cache.Blocks(ds)
	}
	return prefetch.Start(ctx, src, rp, 0, prefetch.Options{
		BatchSize: batchRows, Ahead: s.opts.Ahead, ReadAhead: s.opts.ReadAhead, OnError: spec.OnError,
		Images: images, Pool: s.pool, Memory: s.memory, Mem: s.mem, Logger: s.log,
	})
}

// decoderStatus describes the decoder and what GPU discovery found.
func decoderStatus(d decode.Decoder, choice string, disc *decode.Discovery) *feedv1.DecoderStatus {
	st := &feedv1.DecoderStatus{Name: d.Name(), Choice: choice}
	if disc == nil {
		return st
	}
	st.DriverVersion, st.CudaDriverVersion = disc.Driver, int32(disc.CUDADriver)
	if disc.Err != nil {
		st.GpuError = disc.Err.Error()
	}
	for _, g := range disc.GPUs {
		st.Gpus = append(st.Gpus, &feedv1.GpuStatus{Index: int32(g.Index), Name: g.Name, Uuid: g.UUID,
			MemoryBytes: int64(g.MemoryBytes), ComputeCapability: fmt.Sprintf("%d.%d", g.Major, g.Minor)})
	}
	return st
}
