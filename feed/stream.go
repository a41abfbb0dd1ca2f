package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"google.golang.org/grpc/peer"
)

// Stream is one session: one rank's batches of one epoch. The header waits
// for the first batch, whose size sets the size of a shared-memory ring.
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
	_, images, err := v.s.images(ds, spec, open.GetEpoch())
	if err != nil {
		return err
	}
	planFP := ds.PlanFingerprint(plan)
	want, owner, err := v.s.chooseTransport(ctx, transportFromProto(open.GetTransport()))
	if err != nil {
		return err
	}
	// Sessions end with the server as well as with the client, and when the
	// client breaks the protocol (the cause is then the session's error).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(v.s.base, func() { cancel(nil) })
	defer stop()

	ps, err := v.s.sched.Open(v.request(ds, spec, open, images))
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

	out := &sender{s: v.s, stream: stream, sess: sess, log: log, patience: v.s.opts.ShmSpillAfter,
		minBytes: v.s.opts.ShmMinBatchBytes, buf: v.s.encBufs.Get().(*bytes.Buffer)}
	defer out.close()
	next := func() (*prefetch.Batch, error) {
		b, err := ps.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return b, sessionErr(ctx, err)
	}
	b, err := next()
	if err != nil {
		return err
	}
	defer func() { // a batch not yet handed to the sender
		if b != nil {
			b.Record.Release()
		}
	}()
	used := TransportGRPC
	insist := open.GetTransport() == feedv1.Transport_TRANSPORT_SHM
	if want == TransportShm && b != nil {
		switch err := out.openRing(b, v.s.opts, owner, insist, cancel); {
		case err == nil:
			used = TransportShm
		case errors.Is(err, errSmallBatches):
		case insist:
			return err
		default:
			log.Warn("shared memory unavailable, sending over gRPC", "err", err)
		}
	}
	sess.transport.Store(int32(used))

	sc, err := encodeSchema(ps.Schema())
	if err != nil {
		return err
	}
	h := &feedv1.StreamHeader{
		SessionId: sess.id, ArrowSchema: sc, NumSamples: rp.Len(), StartSample: open.GetStartSample(),
		PaddingSamples: rp.Padding(), Transport: transportToProto(used), PlanFingerprint: planFP,
	}
	if o := sess.offer.Load(); o != nil {
		h.Shm = &feedv1.ShmRing{SocketName: v.s.shmName, Token: o.Token, Size: o.Ring.Header().Size}
	}
	if err := stream.Send(&feedv1.StreamResponse{Kind: &feedv1.StreamResponse_Header{Header: h}}); err != nil {
		return err
	}
	if out.ring != nil {
		// Owned by the stream: Recv returns, and it ends, once the handler
		// has returned and gRPC has closed the stream.
		go out.readAcks(cancel)
	}
	for b != nil {
		cur := b
		b = nil
		if err := out.send(ctx, cur); err != nil {
			return sessionErr(ctx, err)
		}
		if b, err = next(); err != nil {
			return err
		}
	}
	if err := out.awaitClaim(ctx); err != nil {
		return err
	}
	log.Debug("session done", "batches", sess.batches.Load(), "skipped_blocks", ps.Skipped(),
		"skipped_samples", ps.SkippedSamples(), "inline", sess.inline.Load(), "stall", ps.Stall())
	return nil
}

// shmClaimTimeout bounds how long a finished session waits for its client
// to claim the ring that holds its batches.
const shmClaimTimeout = 30 * time.Second

// awaitClaim keeps a session whose batches all went into its ring open
// until the client has the ring: a short epoch can be written out before
// the client has claimed it, and closing the session would withdraw it.
func (s *sender) awaitClaim(ctx context.Context) error {
	o := s.sess.offer.Load()
	if o == nil {
		return nil
	}
	t := time.NewTimer(shmClaimTimeout)
	defer t.Stop()
	select {
	case <-o.Claimed():
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return fmt.Errorf("%w: the client did not claim its shared-memory ring within %v", shard.ErrInvalid, shmClaimTimeout)
	}
}

// sessionErr is the reason a session ends: the cause of its cancellation
// (a protocol error, the client or the server going away) over what it
// did to whatever was waiting.
func sessionErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// chooseTransport decides how a session's batches travel; for shared memory
// it returns the credentials of the process the ring is for: the one at the
// other end of this stream's connection.
func (s *Server) chooseTransport(ctx context.Context, asked Transport) (Transport, PeerInfo, error) {
	if asked == TransportGRPC {
		return TransportGRPC, PeerInfo{}, nil
	}
	var pi PeerInfo
	why := ""
	if s.shmName == "" {
		why = "it is off on this daemon (--shm-ring-bytes 0, or no hand-off socket)"
	} else if p, ok := peer.FromContext(ctx); !ok {
		why = "the client is unknown"
	} else if pi, ok = p.AuthInfo.(PeerInfo); !ok {
		why = "the client did not connect over the daemon's Unix socket"
	}
	switch {
	case why == "":
		return TransportShm, pi, nil
	case asked == TransportShm:
		return 0, pi, fmt.Errorf("%w: shared-memory transport: %s", shard.ErrUnsupported, why)
	}
	return TransportGRPC, pi, nil
}

// sender delivers one session's batches: written into the session's
// shared-memory ring with only their place sent, or inline in gRPC messages
// (every batch without a ring; with one, the batches that do not fit).
type sender struct {
	s        *Server
	stream   feedv1.Feed_StreamServer
	sess     *session
	log      *slog.Logger
	patience time.Duration
	minBytes int64 // smaller batches go inline
	spilled  bool  // a batch went inline because the ring was full
	buf      *bytes.Buffer
	ring     *shm.Ring // nil: all inline
	// charged is what the sender counts against the memory budget besides
	// its ring: its encode buffer's capacity (bufCap) and the gRPC copy in
	// flight; ringBytes is the ring's, charged off the heap.
	charged, bufCap, ringBytes int64
}

// charge counts n more bytes (negative: fewer) against the memory budget.
func (s *sender) charge(n int64) {
	s.charged += n
	if s.s.memory != nil {
		s.s.memory.Charge(n)
	}
}

// errSmallBatches: a session's first batch is too small to gain from
// shared memory.
var errSmallBatches = errors.New("batches smaller than the shared-memory minimum")

// ringBytes sizes a session's ring from its first batch: room for
// ShmRingBatches like it, within the configured bounds.
func ringBytes(first, limit int64) int64 {
	return min(limit, max(first*ShmRingBatches, min(ShmMinRingBytes, limit)))
}

// openRing creates the session's ring, sized by its first batch, and offers
// it to owner; unless the batch is small and the client did not insist. A
// client that acknowledges a batch the ring does not hold ends the session
// through fail.
func (s *sender) openRing(first *prefetch.Batch, opts Options, owner PeerInfo, insist bool, fail context.CancelCauseFunc) error {
	p, n, err := batchPayload(first.Record, s.s.mem)
	if err != nil {
		return err
	}
	p.Release()
	if n < opts.ShmMinBatchBytes && !insist {
		return errSmallBatches
	}
	limit := opts.ShmRingBytes
	token, err := shm.NewToken()
	if err != nil {
		return err
	}
	ring, err := shm.NewRing("loaderd-ring-"+s.sess.id, ringBytes(n, limit), shmSlots)
	if err != nil {
		return err
	}
	s.ring = ring
	// The ring's pages are the daemon's until the client unmaps them, and
	// lie outside the Go heap.
	s.ringBytes = ring.Header().Size
	if s.s.memory != nil {
		s.s.memory.ChargeOffHeap(s.ringBytes)
	}
	s.sess.offer.Store(shm.NewOffer(ring, token, owner.PID, owner.UID, func(err error) {
		fail(fmt.Errorf("%w: %w", shard.ErrInvalid, err))
	}))
	return nil
}

// send delivers b and releases its record.
func (s *sender) send(ctx context.Context, b *prefetch.Batch) error {
	defer b.Record.Release()
	p, n, err := batchPayload(b.Record, s.s.mem)
	if err != nil {
		return err
	}
	defer p.Release()
	msg := &feedv1.Batch{Seq: b.Seq, FirstSample: b.First, NextSample: b.Next, NumRows: b.Record.NumRows(),
		PaddingRows: b.Padding, SkippedSamples: b.Skipped}
	if s.ring != nil && n >= s.minBytes {
		slot, err := s.ring.Alloc(ctx, b.Seq, n, s.patience)
		switch {
		case err == nil:
			// The one copy: Arrow buffers straight into the client's mapping.
			if err := s.ring.Fill(slot, func(w io.Writer) error { _, err := p.WritePayload(w); return err }); err != nil {
				return fmt.Errorf("writing batch %d into shared memory: %w", b.Seq, err)
			}
			msg.Shm = &feedv1.ShmSlot{Slot: uint32(slot.Index), Offset: slot.Offset, Length: slot.Len}
		case errors.Is(err, shm.ErrFull) && !s.spilled:
			s.spilled = true
			s.log.Info("the client holds its whole shared-memory ring: batches go inline over gRPC until it releases one",
				"waited", s.patience)
		case errors.Is(err, shm.ErrFull), errors.Is(err, shm.ErrTooLarge):
		default:
			return err
		}
	}
	if msg.Shm == nil {
		if s.ring != nil {
			s.sess.inline.Add(1)
		}
		s.buf.Reset()
		s.buf.Grow(int(n))
		if _, err := p.WritePayload(s.buf); err != nil {
			return fmt.Errorf("encoding batch: %w", err)
		}
		if c := int64(s.buf.Cap()); c > s.bufCap {
			s.charge(c - s.bufCap)
			s.bufCap = c
		}
		msg.ArrowIpc = s.buf.Bytes()
	}
	// gRPC marshals the message into a buffer of its own until it is
	// written: count that copy while it lives.
	wire := int64(len(msg.ArrowIpc))
	s.charge(wire)
	err = s.stream.Send(&feedv1.StreamResponse{Kind: &feedv1.StreamResponse_Batch{Batch: msg}})
	s.charge(-wire)
	if err != nil {
		return err
	}
	s.sess.batches.Add(1)
	s.sess.rows.Add(msg.NumRows)
	s.sess.bytes.Add(n)
	s.s.served.batches.Add(1)
	s.s.served.rows.Add(msg.NumRows)
	s.s.served.bytes.Add(n)
	return nil
}

// readAcks frees the slots the client acknowledges on the stream, until it
// ends (clients may acknowledge there or on the hand-off connection). A
// client that breaks the protocol ends the session.
func (s *sender) readAcks(cancel context.CancelCauseFunc) {
	for {
		req, err := s.stream.Recv()
		if err != nil {
			return // io.EOF: the client sends nothing more; else the stream is over
		}
		ack := req.GetAck()
		if ack == nil {
			cancel(fmt.Errorf("%w: only acknowledgements may follow the request that opens a stream", shard.ErrInvalid))
			return
		}
		if err := s.ring.Release(ack.GetSeq()); err != nil {
			cancel(fmt.Errorf("%w: %w", shard.ErrInvalid, err))
			return
		}
	}
}

func (s *sender) close() {
	if o := s.sess.offer.Load(); o != nil {
		o.Close()
	}
	if s.ring != nil {
		if err := s.ring.Close(); err != nil {
			s.log.Warn("closing the shared-memory ring", "err", err)
		}
	}
	s.charge(-s.charged)
	// The ring's charge ends with the session. A client that keeps batches
	// past its session keeps their pages mapped, uncounted: they are its
	// memory then, as a copy would be.
	if s.s.memory != nil && s.ringBytes > 0 {
		s.s.memory.ChargeOffHeap(-s.ringBytes)
	}
	s.s.encBufs.Put(s.buf)
}
