package feed

import (
	"context"
	"runtime"
	"time"

	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
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
	sc, err := encodeSchema(ds.Schema())
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
	return &feedv1.StatusResponse{
		Version:       v.s.opts.Version,
		UptimeSeconds: now.Sub(v.s.started).Seconds(),
		Sessions:      v.s.sessions.status(now),
		Plans:         v.s.sessions.plans(),
	}, nil
}

// share computes the epoch plan an OpenStream names and the rank's part of it.
func (v *service) share(ctx context.Context, open *feedv1.OpenStream) (*shard.Dataset, *shard.EpochPlan, *shard.RankPlan, error) {
	spec := specFromProto(open.GetDataset())
	ds, err := v.s.datasets.open(ctx, spec, v.s.log)
	if err != nil {
		return nil, nil, nil, err
	}
	plan, err := shard.NewEpochPlan(ds.BlockRows(), spec.Shuffle, open.GetEpoch(), int(open.GetWorldSize()), modeFromProto(open.GetMode()))
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
