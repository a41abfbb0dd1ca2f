package feed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/decode"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/shard"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Client talks to a daemon over its Unix socket. It is what `loaderd demo`,
// `loaderd status`, the tests and the benchmarks use; trainers use the Python
// client.
type Client struct {
	conn   *grpc.ClientConn
	api    feedv1.FeedClient
	health healthpb.HealthClient
	mem    memory.Allocator
	socket string
}

// Dial connects to the daemon at socket ("" means DefaultSocket). It does not
// wait: the first call fails if no daemon listens.
func Dial(socket string) (*Client, error) {
	if socket == "" {
		socket = DefaultSocket()
	}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return &Client{conn: conn, api: feedv1.NewFeedClient(conn), health: healthpb.NewHealthClient(conn),
		mem: memory.DefaultAllocator, socket: socket}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// DatasetInfo describes an opened dataset.
type DatasetInfo struct {
	Schema              *arrow.Schema
	Rows, Files, Blocks int64
	Fingerprint         string
}

// Describe opens a dataset on the daemon and describes it.
func (c *Client) Describe(ctx context.Context, spec shard.Spec) (DatasetInfo, error) {
	resp, err := c.api.Describe(ctx, &feedv1.DescribeRequest{Dataset: specToProto(spec)})
	if err != nil {
		return DatasetInfo{}, err
	}
	r, err := decodeSchema(resp.GetArrowSchema(), c.mem)
	if err != nil {
		return DatasetInfo{}, err
	}
	return DatasetInfo{Schema: r, Rows: resp.GetNumRows(), Files: resp.GetNumFiles(),
		Blocks: resp.GetNumBlocks(), Fingerprint: resp.GetFingerprint()}, nil
}

// StreamRequest asks for one rank's batches of one epoch.
type StreamRequest struct {
	Spec        shard.Spec
	Rank, World int
	Mode        shard.Mode
	Epoch       int64
	BatchSize   int
	DropLast    bool
	StartSample int64
	Job         string
	// Transport: auto (the default) takes shared memory when the daemon
	// offers it and falls back to gRPC if the ring cannot be received.
	Transport Transport
}

// BatchReader reads a stream's batches.
type BatchReader struct {
	stream     grpc.BidiStreamingClient[feedv1.StreamRequest, feedv1.StreamResponse]
	dec        *decoder
	cancel     context.CancelFunc
	ring       *shm.Mapping // nil on gRPC
	acks       *shm.Acks
	NumSamples int64 // in the rank's epoch, padding included
	Padding    int64
	SessionID  string
	// PlanFingerprint identifies the epoch's global plan (see Client.Plan).
	PlanFingerprint string
	Transport       Transport // the one in use: TransportGRPC or TransportShm
}

// ClientBatch is one received batch; the caller releases Record.
type ClientBatch struct {
	Record            arrow.RecordBatch
	Seq, First, Next  int64
	Padding, IPCBytes int64
	// Shm is whether the batch came through the shared-memory ring.
	Shm     bool
	Skipped int64 // samples left out: their image did not decode
}

// Stream opens a session and returns its reader; Close it when done.
func (c *Client) Stream(ctx context.Context, req StreamRequest) (*BatchReader, error) {
	br, err := c.stream(ctx, req, req.Transport)
	if err != nil && req.Transport == TransportAuto && errors.Is(err, errNoRing) {
		return c.stream(ctx, req, TransportGRPC)
	}
	return br, err
}

// errNoRing marks a session whose shared-memory ring could not be received.
var errNoRing = errors.New("feed: no shared-memory ring")

func (c *Client) stream(ctx context.Context, req StreamRequest, tr Transport) (*BatchReader, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.api.Stream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	open := req.toProto()
	open.Transport = transportToProto(tr)
	if err := st.Send(&feedv1.StreamRequest{Kind: &feedv1.StreamRequest_Open{Open: open}}); err != nil {
		cancel()
		return nil, recvErr(st, err)
	}
	first, err := st.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	h := first.GetHeader()
	if h == nil {
		cancel()
		return nil, errors.New("feed: stream did not start with a header")
	}
	br := &BatchReader{stream: st, dec: newDecoder(h.GetArrowSchema(), c.mem), cancel: cancel,
		NumSamples: h.GetNumSamples(), Padding: h.GetPaddingSamples(), SessionID: h.GetSessionId(),
		PlanFingerprint: h.GetPlanFingerprint(), Transport: TransportGRPC}
	if h.GetTransport() == feedv1.Transport_TRANSPORT_SHM {
		ring, acks, err := c.receiveRing(ctx, h)
		if err != nil {
			br.Close()
			return nil, err
		}
		br.ring, br.acks, br.Transport = ring, acks, TransportShm
	}
	return br, nil
}

// receiveRing claims and maps a session's ring.
func (c *Client) receiveRing(ctx context.Context, h *feedv1.StreamHeader) (*shm.Mapping, *shm.Acks, error) {
	r := h.GetShm()
	path := filepath.Join(filepath.Dir(c.socket), filepath.Base(r.GetSocketName()))
	fd, acks, err := shm.ClaimWithAcks(ctx, path, h.GetSessionId(), r.GetToken())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errNoRing, err)
	}
	defer func() { _ = unix.Close(fd) }()
	m, err := shm.Map(fd)
	if err != nil {
		_ = acks.Close()
		return nil, nil, fmt.Errorf("%w: %w", errNoRing, err)
	}
	return m, acks, nil
}

func (req StreamRequest) toProto() *feedv1.OpenStream {
	return &feedv1.OpenStream{
		Dataset: specToProto(req.Spec), Rank: int32(req.Rank), WorldSize: int32(req.World),
		Mode: modeToProto(req.Mode), Epoch: req.Epoch, BatchSize: int32(req.BatchSize),
		DropLast: req.DropLast, StartSample: req.StartSample, Job: req.Job,
		Transport: transportToProto(req.Transport),
	}
}

// PlanInfo describes one rank's share of an epoch.
type PlanInfo struct {
	// Fingerprint is the same on every daemon that computes the same global
	// plan: the ranks of a multi-node job compare it to know they agree.
	Fingerprint string
	// Samples in the rank's epoch, padding included; of which padding; and
	// the epoch's distinct samples over all ranks.
	NumSamples, Padding, Total int64
}

// Plan describes the share req names (its dataset, rank, world size, mode
// and epoch) without streaming it.
func (c *Client) Plan(ctx context.Context, req StreamRequest) (PlanInfo, error) {
	resp, err := c.api.Plan(ctx, &feedv1.PlanRequest{Open: req.toProto()})
	if err != nil {
		return PlanInfo{}, err
	}
	return PlanInfo{Fingerprint: resp.GetPlanFingerprint(), NumSamples: resp.GetNumSamples(),
		Padding: resp.GetPaddingSamples(), Total: resp.GetTotalSamples()}, nil
}

// Health asks the daemon's gRPC health service about service ("" for the
// daemon as a whole) and returns its answer: "SERVING", "NOT_SERVING", ...
func (c *Client) Health(ctx context.Context, service string) (string, error) {
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return "", err
	}
	return resp.GetStatus().String(), nil
}

// recvErr returns the stream's own error when a send failed because the
// server already ended it.
func recvErr(st grpc.BidiStreamingClient[feedv1.StreamRequest, feedv1.StreamResponse], err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := st.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// Next returns the next batch, or io.EOF after the last.
func (r *BatchReader) Next() (*ClientBatch, error) {
	m, err := r.stream.Recv()
	if err != nil {
		return nil, err
	}
	b := m.GetBatch()
	if b == nil {
		return nil, errors.New("feed: expected a batch")
	}
	msg := b.GetArrowIpc()
	if s := b.GetShm(); s != nil {
		if r.ring == nil {
			return nil, errors.New("feed: a shared-memory batch on a stream without a ring")
		}
		if msg, err = r.ring.Slot(s.GetOffset(), s.GetLength()); err != nil {
			return nil, err
		}
	}
	// The Go client decodes into its own memory (a copy) and releases the
	// slot at once; the zero-copy consumer is the Python client.
	rec, err := r.dec.decode(msg)
	if err != nil {
		return nil, err
	}
	if b.GetShm() != nil {
		// An error here means the session is over; Recv reports why.
		_ = r.acks.Ack(b.GetSeq())
	}
	return &ClientBatch{Record: rec, Seq: b.GetSeq(), First: b.GetFirstSample(), Next: b.GetNextSample(),
		Padding: b.GetPaddingRows(), IPCBytes: int64(len(msg)), Shm: b.GetShm() != nil,
		Skipped: b.GetSkippedSamples()}, nil
}

// Close ends the session.
func (r *BatchReader) Close() {
	r.cancel()
	r.dec.close()
	if r.ring != nil {
		_ = r.ring.Close()
		_ = r.acks.Close()
	}
}

// SessionReport is one row of a status report.
type SessionReport struct {
	ID, Job              string
	Rank, World          int
	Epoch                int64
	Batches, Rows, Bytes int64
	BatchesPerSecond     float64
	QueueDepth, QueueCap int
	// Stall and Age are seconds: waiting on an empty queue, and since the
	// session opened.
	Stall, Age float64
	// Prepared: the epoch was prepared before the session asked.
	Prepared  bool
	Transport Transport
	// Shared memory: the ring's data bytes, what the client holds of it,
	// batches that went inline, time spent waiting for the client.
	ShmRingBytes, ShmBytesHeld int64
	ShmSlotsHeld               int
	ShmInline                  int64
	ShmWaitSeconds             float64
}

// StallFraction is the share of the session's life spent waiting for batches.
func (r SessionReport) StallFraction() float64 {
	if r.Age <= 0 {
		return 0
	}
	return r.Stall / r.Age
}

// CacheReport is the block cache's part of a status report.
type CacheReport struct {
	Budget, Bytes                  int64
	Hits, Misses, Evictions, Loads int64
	Rejections, LoadedBytes        int64
	LoadSeconds                    float64
}

// HitRate is hits over lookups, or 0 before any.
func (r CacheReport) HitRate() float64 {
	if n := r.Hits + r.Misses; n > 0 {
		return float64(r.Hits) / float64(n)
	}
	return 0
}

// MemoryReport is the memory budget's part of a status report.
type MemoryReport struct {
	Budget, DataLimit              int64
	InUse, Idle, Charged, Reserved int64
	WaitSeconds                    float64
	RSS, PeakRSS                   int64
}

// LookaheadReport counts epochs prepared ahead of their sessions.
type LookaheadReport struct {
	Waiting                             int
	Prepared, Claimed, Expired, Refused int64
}

// PlanReport is one global plan and the ranks a daemon serves of it.
type PlanReport struct {
	Job         string
	Epoch       int64
	World       int
	Fingerprint string
	Ranks       []int
}

// StatusReport is what `loaderd status` shows.
type StatusReport struct {
	Version   string
	Uptime    float64
	Sessions  []SessionReport
	Plans     []PlanReport
	Cache     *CacheReport  // nil when the daemon has no cache
	Memory    *MemoryReport // nil when the daemon has no budget
	Lookahead LookaheadReport
	Writes    []WriteReport
	Decoder   DecoderReport
	Uploads   *shard.MemStats // nil when the daemon takes no uploads
}

// DecoderReport is the image decoder the daemon chose, why, and the GPUs it
// found (or why none).
type DecoderReport struct {
	Name, Choice string
	Driver       string
	GPUs         []decode.GPU
	GPUError     string
}

// WriteReport is the progress of one dataset write.
type WriteReport struct {
	ID, Job, Dir, Format, State, Error string
	Rows, TotalRows, Files, Bytes      int64
	Seconds                            float64
}

// Status asks the daemon for its status.
func (c *Client) Status(ctx context.Context) (StatusReport, error) {
	resp, err := c.api.Status(ctx, &feedv1.StatusRequest{})
	if err != nil {
		return StatusReport{}, err
	}
	r := StatusReport{Version: resp.GetVersion(), Uptime: resp.GetUptimeSeconds()}
	for _, s := range resp.GetSessions() {
		r.Sessions = append(r.Sessions, SessionReport{
			ID: s.GetSessionId(), Job: s.GetJob(), Rank: int(s.GetRank()), World: int(s.GetWorldSize()),
			Epoch: s.GetEpoch(), Batches: s.GetBatchesSent(), Rows: s.GetRowsSent(), Bytes: s.GetBytesSent(),
			BatchesPerSecond: s.GetBatchesPerSecond(), QueueDepth: int(s.GetQueueDepth()),
			QueueCap: int(s.GetQueueCapacity()), Stall: s.GetStallSeconds(), Age: s.GetAgeSeconds(),
			Prepared:  s.GetPrepared(),
			Transport: transportFromProto(s.GetTransport()), ShmRingBytes: s.GetShmRingBytes(),
			ShmBytesHeld: s.GetShmBytesHeld(), ShmSlotsHeld: int(s.GetShmSlotsHeld()),
			ShmInline: s.GetShmInlineBatches(), ShmWaitSeconds: s.GetShmWaitSeconds(),
		})
	}
	for _, p := range resp.GetPlans() {
		pr := PlanReport{Job: p.GetJob(), Epoch: p.GetEpoch(), World: int(p.GetWorldSize()), Fingerprint: p.GetPlanFingerprint()}
		for _, rank := range p.GetRanks() {
			pr.Ranks = append(pr.Ranks, int(rank))
		}
		r.Plans = append(r.Plans, pr)
	}
	if cs := resp.GetCache(); cs != nil {
		r.Cache = &CacheReport{Budget: cs.GetBudgetBytes(), Bytes: cs.GetBytes(), Hits: cs.GetHits(),
			Misses: cs.GetMisses(), Evictions: cs.GetEvictions(), Rejections: cs.GetRejections(),
			Loads: cs.GetLoads(), LoadedBytes: cs.GetLoadedBytes(), LoadSeconds: cs.GetLoadSeconds()}
	}
	if m := resp.GetMemory(); m != nil {
		r.Memory = &MemoryReport{Budget: m.GetBudgetBytes(), DataLimit: m.GetDataLimitBytes(), InUse: m.GetInUseBytes(), Idle: m.GetIdleBytes(),
			Charged: m.GetChargedBytes(), Reserved: m.GetReservedBytes(), WaitSeconds: m.GetWaitSeconds(),
			RSS: m.GetRssBytes(), PeakRSS: m.GetPeakRssBytes()}
	}
	if la := resp.GetLookahead(); la != nil {
		r.Lookahead = LookaheadReport{Waiting: int(la.GetWaiting()), Prepared: la.GetPrepared(),
			Claimed: la.GetClaimed(), Expired: la.GetExpired(), Refused: la.GetRefused()}
	}
	for _, w := range resp.GetWrites() {
		r.Writes = append(r.Writes, WriteReport{
			ID: w.GetWriteId(), Job: w.GetJob(), Dir: w.GetDir(), Format: w.GetFormat(), State: w.GetState(),
			Error: w.GetError(), Rows: w.GetRowsWritten(), TotalRows: w.GetRowsTotal(), Files: w.GetFilesWritten(),
			Bytes: w.GetBytesWritten(), Seconds: w.GetSeconds(),
		})
	}
	if d := resp.GetDecoder(); d != nil {
		r.Decoder = DecoderReport{Name: d.GetName(), Choice: d.GetChoice(), Driver: d.GetDriverVersion(), GPUError: d.GetGpuError()}
		for _, g := range d.GetGpus() {
			var major, minor int
			_, _ = fmt.Sscanf(g.GetComputeCapability(), "%d.%d", &major, &minor)
			r.Decoder.GPUs = append(r.Decoder.GPUs, decode.GPU{Index: int(g.GetIndex()), Name: g.GetName(), UUID: g.GetUuid(),
				MemoryBytes: uint64(g.GetMemoryBytes()), Major: major, Minor: minor})
		}
	}
	if u := resp.GetUploads(); u != nil {
		r.Uploads = &shard.MemStats{Budget: u.GetBudgetBytes(), Bytes: u.GetBytes(), Tables: int(u.GetTables()),
			Uploads: u.GetUploads(), Evictions: u.GetEvictions(), Reserved: u.GetReservedBytes()}
	}
	return r, nil
}

// uploadChunk is the size of an upload's messages.
const uploadChunk = 1 << 20

// Upload sends a table (Parquet bytes) to the daemon's upload store, unless
// it holds it already, and returns its URI (mem://<sha256>).
func (c *Client) Upload(ctx context.Context, table []byte) (string, error) {
	sum := sha256.Sum256(table)
	st, err := c.api.Upload(ctx)
	if err != nil {
		return "", err
	}
	h := &feedv1.UploadHeader{Sha256: hex.EncodeToString(sum[:]), Size: int64(len(table))}
	if err := st.Send(&feedv1.UploadRequest{Part: &feedv1.UploadRequest_Header{Header: h}}); err != nil {
		if _, err2 := st.CloseAndRecv(); err2 != nil { // the server's answer says why
			err = err2
		}
		return "", err
	}
	for rest := table; len(rest) > 0; {
		n := min(len(rest), uploadChunk)
		if err := st.Send(&feedv1.UploadRequest{Part: &feedv1.UploadRequest_Chunk{Chunk: rest[:n]}}); err != nil {
			break // the server ended the call: CloseAndRecv says how
		}
		rest = rest[n:]
	}
	resp, err := st.CloseAndRecv()
	if err != nil {
		return "", err
	}
	return resp.GetUri(), nil
}

// Version asks the daemon for its version.
func (c *Client) Version(ctx context.Context) (string, error) {
	resp, err := c.api.Version(ctx, &feedv1.VersionRequest{})
	if err != nil {
		return "", err
	}
	return resp.GetVersion(), nil
}
