package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

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
		Writes:        v.s.writes.status(),
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

// bufPool recycles the buffers batches are encoded into: writing into fresh
// memory is several times slower than into memory already in use.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (v *service) Stream(stream feedv1.Feed_StreamServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return fmt.Errorf("%w: the first message of a stream must open it", shard.ErrInvalid)
	}
	spec := specFromProto(open.GetDataset())
	ds, plan, rp, err := v.share(ctx, open)
	if err != nil {
		return err
	}
	planFP := ds.PlanFingerprint(plan)
	// Sessions end with the server as well as with the client.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(v.s.base, cancel)
	defer stop()

	ps, err := prefetch.Start(ctx, ds, rp, open.GetStartSample(), prefetch.Options{
		BatchSize: int(open.GetBatchSize()), DropLast: open.GetDropLast(),
		Ahead: v.s.opts.Ahead, ReadAhead: v.s.opts.ReadAhead,
		OnError: spec.OnError, Pool: v.s.pool, Mem: v.s.mem, Logger: v.s.log,
	})
	if err != nil {
		return err
	}
	defer ps.Close()

	sess := &session{
		id: fmt.Sprintf("s%d", v.s.sessions.seq.Add(1)), job: open.GetJob(),
		rank: open.GetRank(), world: open.GetWorldSize(), epoch: open.GetEpoch(), plan: planFP,
		started: time.Now(), queueDepth: ps.QueueDepth,
	}
	v.s.sessions.add(sess)
	defer v.s.sessions.remove(sess.id)
	log := v.s.log.With("session", sess.id, "job", sess.job, "rank", sess.rank, "epoch", sess.epoch)
	log.Debug("session opened", "plan", rp.String(), "plan_fingerprint", planFP, "from", open.GetStartSample())

	sc, err := encodeSchema(ds.Schema())
	if err != nil {
		return err
	}
	if err := stream.Send(&feedv1.StreamResponse{Kind: &feedv1.StreamResponse_Header{Header: &feedv1.StreamHeader{
		SessionId: sess.id, ArrowSchema: sc, NumSamples: rp.Len(), StartSample: open.GetStartSample(),
		PaddingSamples: rp.Padding(), Transport: feedv1.Transport_TRANSPORT_GRPC, PlanFingerprint: planFP,
	}}}); err != nil {
		return err
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	for {
		b, err := ps.Next(ctx)
		if errors.Is(err, io.EOF) {
			log.Debug("session done", "batches", sess.batches.Load(), "skipped_blocks", ps.Skipped())
			return nil
		}
		if err != nil {
			return err
		}
		buf.Reset()
		err = encodeBatch(buf, b.Record, v.s.mem)
		rows := b.Record.NumRows()
		b.Record.Release()
		if err != nil {
			return err
		}
		if err := stream.Send(&feedv1.StreamResponse{Kind: &feedv1.StreamResponse_Batch{Batch: &feedv1.Batch{
			Seq: b.Seq, FirstSample: b.First, NextSample: b.Next, NumRows: rows,
			PaddingRows: b.Padding, ArrowIpc: buf.Bytes(),
		}}}); err != nil {
			return err
		}
		sess.batches.Add(1)
		sess.rows.Add(rows)
		sess.bytes.Add(int64(buf.Len()))
	}
}
