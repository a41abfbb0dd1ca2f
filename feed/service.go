package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
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
	resp := &feedv1.StatusResponse{
		Version:       v.s.opts.Version,
		UptimeSeconds: now.Sub(v.s.started).Seconds(),
		Sessions:      v.s.sessions.status(now),
		Plans:         v.s.sessions.plans(),
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

	ps, err := v.s.sched.Open(v.request(ds, spec, open))
	if err != nil {
		return err
	}
	defer ps.Close()

	sess := &session{
		id: fmt.Sprintf("s%d", v.s.sessions.seq.Add(1)), job: open.GetJob(),
		rank: open.GetRank(), world: open.GetWorldSize(), epoch: open.GetEpoch(), plan: planFP,
		started: time.Now(), stream: ps,
	}
	v.s.sessions.add(sess)
	defer v.s.sessions.remove(sess.id)
	log := v.s.log.With("session", sess.id, "job", sess.job, "rank", sess.rank, "epoch", sess.epoch)
	log.Debug("session opened", "plan", rp.String(), "plan_fingerprint", planFP, "from", open.GetStartSample(),
		"prepared", ps.Prepared())

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
	enc := v.s.encoder()
	defer enc.close()
	for {
		b, err := ps.Next(ctx)
		if errors.Is(err, io.EOF) {
			log.Debug("session done", "batches", sess.batches.Load(), "skipped_blocks", ps.Skipped(),
				"stall", ps.Stall())
			return nil
		}
		if err != nil {
			return err
		}
		msg, err := enc.encode(b.Record, v.s.mem)
		rows := b.Record.NumRows()
		b.Record.Release()
		if err != nil {
			return err
		}
		// gRPC marshals the message into a buffer of its own until it is
		// written: count that copy while it lives.
		enc.charge(int64(len(msg)))
		err = stream.Send(&feedv1.StreamResponse{Kind: &feedv1.StreamResponse_Batch{Batch: &feedv1.Batch{
			Seq: b.Seq, FirstSample: b.First, NextSample: b.Next, NumRows: rows,
			PaddingRows: b.Padding, ArrowIpc: msg,
		}}})
		enc.charge(-int64(len(msg)))
		if err != nil {
			return err
		}
		sess.batches.Add(1)
		sess.rows.Add(rows)
		sess.bytes.Add(int64(len(msg)))
		v.s.served.batches.Add(1)
		v.s.served.rows.Add(rows)
		v.s.served.bytes.Add(int64(len(msg)))
	}
}

// request describes the session's epoch to the scheduler: what identifies
// its batches (so that a prepared epoch can be claimed), where its blocks
// come from, and how to plan any epoch of it.
func (v *service) request(ds *shard.Dataset, spec shard.Spec, open *feedv1.OpenStream) prefetch.Request {
	rank, world, mode := int(open.GetRank()), int(open.GetWorldSize()), modeFromProto(open.GetMode())
	key := prefetch.EpochKey{
		Dataset: ds, Rank: rank, World: world, Mode: mode, Epoch: open.GetEpoch(),
		BatchSize: int(open.GetBatchSize()), DropLast: open.GetDropLast(),
	}
	if sh := spec.Shuffle; sh != nil {
		key.Shuffled, key.Seed, key.WindowRows = true, sh.Seed, sh.WindowRows
	}
	var src prefetch.Source = ds
	if v.s.cache != nil {
		src = v.s.cache.Blocks(ds)
	}
	return prefetch.Request{
		Key: key, Source: src, From: open.GetStartSample(),
		Plan: func(epoch int64) (*shard.RankPlan, error) {
			plan, err := shard.NewEpochPlan(ds.BlockRows(), spec.Shuffle, epoch, world, mode)
			if err != nil {
				return nil, err
			}
			return plan.Rank(rank)
		},
		Options: prefetch.Options{Ahead: v.s.opts.Ahead, ReadAhead: v.s.opts.ReadAhead, OnError: spec.OnError},
	}
}

// encoder turns a session's batches into IPC messages in one reused buffer,
// and counts what it holds against the memory budget.
type encoder struct {
	s       *Server
	buf     *bytes.Buffer
	charged int64
}

func (s *Server) encoder() *encoder {
	return &encoder{s: s, buf: s.encBufs.Get().(*bytes.Buffer)}
}

func (e *encoder) encode(rec arrow.RecordBatch, mem memory.Allocator) ([]byte, error) {
	e.buf.Reset()
	if err := encodeBatch(e.buf, rec, mem); err != nil {
		return nil, err
	}
	if c := int64(e.buf.Cap()); c > e.charged {
		e.charge(c - e.charged)
		e.charged = c
	}
	return e.buf.Bytes(), nil
}

func (e *encoder) charge(n int64) {
	if e.s.memory != nil {
		e.s.memory.Charge(n)
	}
}

func (e *encoder) close() {
	e.charge(-e.charged)
	e.s.encBufs.Put(e.buf)
}
