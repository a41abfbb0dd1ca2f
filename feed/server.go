package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/validator"
	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/decode"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/feed/internal/shm"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Options configure the server. Zero values take the defaults of
// EnsureDefaults.
type Options struct {
	Socket string
	// SocketDirMode is the mode of the socket's directory when the server
	// creates it: 0700, or 0750 when a group is allowed.
	SocketDirMode os.FileMode
	AllowUIDs     []uint32
	AllowGIDs     []uint32
	// MaxRecvBytes bounds a request; MaxSendBytes bounds a batch message.
	MaxRecvBytes int
	MaxSendBytes int
	// Ahead is the number of ready batches queued per session; ReadAhead the
	// number of blocks a session reads at once.
	Ahead     int
	ReadAhead int
	// Datasets is how many opened datasets are kept for reuse.
	Datasets int
	// LookaheadTTL is how long a prepared next epoch waits for its session;
	// MaxPrepared bounds how many wait at once (negative: no look-ahead).
	// Zero takes prefetch's defaults.
	LookaheadTTL time.Duration
	MaxPrepared  int
	// GroupBytes bounds the rows one GroupBy holds to assemble its groups.
	GroupBytes int64
	// ShutdownGrace is how long open calls may run after a stop is asked for.
	ShutdownGrace time.Duration
	Version       string
	// ShmRingBytes bounds the data area of each session's shared-memory
	// ring: the memory a session pins for batches the client has not
	// released yet, on top of its prefetch queue. A ring is sized to hold
	// ShmRingBatches batches like the session's first, within
	// [min(ShmMinRingBytes, ShmRingBytes), ShmRingBytes]. Negative disables
	// the shared-memory transport.
	ShmRingBytes int64
	// ShmSpillAfter is how long a batch waits for room in a full ring (the
	// client holds every slot) before it goes inline over gRPC instead. Until
	// the client releases a slot, later batches then go inline at once.
	ShmSpillAfter time.Duration
	// ShmMinBatchBytes: smaller batches go inline even on a shared-memory
	// session: for them a gRPC message costs less than a slot and its
	// acknowledgement. A session whose first batch is smaller gets gRPC,
	// unless the client insisted on TransportShm. Zero means
	// DefaultShmMinBatchBytes; negative, every batch goes through the ring.
	ShmMinBatchBytes int64
}

// Shared-memory ring sizing; see Options.ShmRingBytes.
const (
	DefaultShmRingBytes     = 256 << 20
	DefaultShmMinBatchBytes = 64 << 10
	ShmMinRingBytes         = 4 << 20
	ShmRingBatches          = 8
	// shmSlots bounds the batches in a ring at once, whatever their size.
	shmSlots = 64
)

// EnsureDefaults fills zero fields with defaults.
func (o *Options) EnsureDefaults() {
	if o.Socket == "" {
		o.Socket = DefaultSocket()
	}
	if o.SocketDirMode == 0 {
		o.SocketDirMode = 0o700
		if len(o.AllowGIDs) > 0 {
			o.SocketDirMode = 0o750
		}
	}
	if o.MaxRecvBytes == 0 {
		o.MaxRecvBytes = 16 << 20
	}
	if o.MaxSendBytes == 0 {
		o.MaxSendBytes = 1 << 30
	}
	if o.Ahead == 0 {
		o.Ahead = 4
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 4
	}
	if o.Datasets == 0 {
		o.Datasets = 64
	}
	if o.GroupBytes == 0 {
		o.GroupBytes = 1 << 30
	}
	if o.ShutdownGrace == 0 {
		o.ShutdownGrace = 5 * time.Second
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.ShmRingBytes == 0 {
		o.ShmRingBytes = DefaultShmRingBytes
	}
	if o.ShmSpillAfter == 0 {
		o.ShmSpillAfter = time.Second
	}
	if o.ShmMinBatchBytes == 0 {
		o.ShmMinBatchBytes = DefaultShmMinBatchBytes
	}
}

// Validate reports options that cannot work.
func (o *Options) Validate() error {
	switch {
	case o.MaxRecvBytes < 1<<16:
		return fmt.Errorf("max request size %d is below 64 KiB", o.MaxRecvBytes)
	case o.MaxSendBytes < 1<<20:
		return fmt.Errorf("max batch message size %d is below 1 MiB", o.MaxSendBytes)
	case o.Ahead < 1 || o.ReadAhead < 1:
		return fmt.Errorf("queue depths must be at least 1")
	case o.ShmRingBytes > 0 && o.ShmRingBytes < 1<<16:
		return fmt.Errorf("shared-memory ring of %d bytes is below 64 KiB", o.ShmRingBytes)
	case o.ShmSpillAfter < 0:
		return fmt.Errorf("shared-memory spill delay %v is negative", o.ShmSpillAfter)
	}
	return nil
}

// Deps are the server's collaborators, made by the caller.
type Deps struct {
	Store   shard.Store
	Formats shard.Formats
	Pool    *prefetch.Pool
	// Memory is the daemon's budget: the allocator of every block and batch,
	// and the gate reads wait at. nil: no budget (Mem or Go's allocator).
	Memory *prefetch.Memory
	Mem    memory.Allocator
	// Cache, when set, holds decoded blocks for every session.
	Cache   *cache.Cache
	Metrics *prefetch.Metrics
	// Decoder decodes images for specs that ask for it (default: the CPU).
	Decoder decode.Decoder
	Logger  *slog.Logger
	// Outputs opens the directories Write writes to; nil: no writes.
	Outputs shard.Outputs
	// DecoderChoice says why Decoder was chosen, and GPUs what discovery
	// found, for the status; both optional.
	DecoderChoice string
	GPUs          *decode.Discovery
	// Uploads keeps the tables clients upload (its URIs must also reach
	// Store); nil: uploads are refused.
	Uploads *shard.MemStore
}

// Server serves the feed API on a Unix socket.
type Server struct {
	opts     Options
	log      *slog.Logger
	pool     *prefetch.Pool
	decoder  decode.Decoder
	mem      memory.Allocator
	memory   *prefetch.Memory
	cache    *cache.Cache
	sched    *prefetch.Scheduler
	datasets *datasets
	sessions *sessions
	encBufs  sync.Pool // *bytes.Buffer: writing into reused memory is faster than into fresh
	writes   *writes
	outputs  shard.Outputs
	uploads  *shard.MemStore
	started  time.Time
	// decoderChoice and gpus are shown in the status.
	decoderChoice string
	gpus          *decode.Discovery
	// served counts what every session together sent, since the start.
	served struct{ batches, rows, bytes atomic.Int64 }
	// base is canceled when the server stops; every session derives from it.
	base context.Context
	// shmName is the hand-off socket's file name, beside the main socket;
	// empty when the shared-memory transport is off.
	shmName string
}

// NewServer returns a server; Serve starts it.
func NewServer(opts Options, deps Deps) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Formats == nil {
		return nil, errors.New("feed: a store and formats are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Pool == nil {
		deps.Pool = prefetch.NewPool(1)
	}
	if deps.Mem == nil {
		deps.Mem = memory.DefaultAllocator
		if deps.Memory != nil {
			deps.Mem = deps.Memory
		}
	}
	if deps.Decoder == nil {
		deps.Decoder = decode.NewCPU(decode.Options{})
	}
	s := &Server{
		opts: opts, log: deps.Logger, pool: deps.Pool, mem: deps.Mem, memory: deps.Memory, cache: deps.Cache,
		decoder: deps.Decoder, decoderChoice: deps.DecoderChoice, gpus: deps.GPUs,
		sched: prefetch.NewScheduler(prefetch.SchedulerOptions{
			Pool: deps.Pool, Memory: deps.Memory, Metrics: deps.Metrics, Logger: deps.Logger,
			LookaheadTTL: opts.LookaheadTTL, MaxPrepared: opts.MaxPrepared,
		}),
		datasets: newDatasets(shard.OpenOptions{Store: deps.Store, Formats: deps.Formats}, opts.Datasets),
		sessions: newSessions(),
		writes:   &writes{}, outputs: deps.Outputs, uploads: deps.Uploads,
	}
	s.encBufs.New = func() any { return new(bytes.Buffer) }
	return s, nil
}

// Socket is the path the server listens on.
func (s *Server) Socket() string { return s.opts.Socket }

// Serve listens on the socket and serves until ctx is done; then it stops
// taking calls, cancels open sessions and prepared epochs, waits up to
// ShutdownGrace, removes the socket and returns nil. ready, if not nil, is
// called once listening. A server serves once.
//
// The socket also serves the standard gRPC health service (grpc.health.v1):
// SERVING, for the server as a whole ("") and for the feed service, from the
// moment it listens; NOT_SERVING as soon as it begins to stop.
func (s *Server) Serve(ctx context.Context, ready func()) error {
	defer s.sched.Close()
	l, err := listen(s.opts.Socket, s.opts.SocketDirMode)
	if err != nil {
		return err
	}
	// Not ctx itself: sessions end after the listener stops, when cancel is
	// called below.
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	s.base = base
	s.started = time.Now()

	handedOff := make(chan struct{})
	if hl := s.listenShm(); hl != nil {
		h := shm.NewHandoff(hl, s.sessions.offer, s.log)
		go func() { h.Serve(base); close(handedOff) }()
	} else {
		close(handedOff)
	}
	defer func() { cancel(); <-handedOff }() // the hand-off stops with base

	g := grpc.NewServer(s.serverOptions()...)
	feedv1.RegisterFeedServer(g, &service{s: s})
	hs := health.NewServer() // "" starts SERVING
	hs.SetServingStatus(feedv1.Feed_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)

	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	if ready != nil {
		ready()
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", s.opts.Socket, err)
	case <-ctx.Done():
	}
	hs.Shutdown() // NOT_SERVING from now on: probes see the daemon going
	cancel()      // sessions end; their streams return promptly
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.opts.ShutdownGrace):
		g.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		s.log.Warn("serving ended", "err", err)
	}
	return nil
}

// ShmSocket is the path of the hand-off socket that gives clients their
// rings: the main socket's path with ".shm" appended.
func (s *Server) ShmSocket() string { return s.opts.Socket + ".shm" }

// listenShm opens the hand-off socket, or returns nil, and leaves the
// shared-memory transport off, when it is disabled or cannot listen: the
// daemon still serves, over gRPC alone.
func (s *Server) listenShm() *net.UnixListener {
	if s.opts.ShmRingBytes <= 0 {
		return nil
	}
	l, err := listen(s.ShmSocket(), s.opts.SocketDirMode)
	if err != nil {
		s.log.Warn("shared-memory transport off: no hand-off socket", "err", err)
		return nil
	}
	s.shmName = filepath.Base(s.ShmSocket())
	return l
}

func (s *Server) serverOptions() []grpc.ServerOption {
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	recoverOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.ErrorContext(ctx, "panic in a call", "panic", p, "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error: %v", p)
	})
	// Health probes come every few seconds: logging each would drown the log.
	notHealth := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service != healthpb.Health_ServiceDesc.ServiceName
	})
	return []grpc.ServerOption{
		grpc.Creds(newPeerCreds(s.opts.AllowUIDs, s.opts.AllowGIDs)),
		grpc.MaxRecvMsgSize(s.opts.MaxRecvBytes),
		grpc.MaxSendMsgSize(s.opts.MaxSendBytes),
		// Outermost first: recovery wraps everything, then errors are mapped
		// to codes so the logger sees the real ones, then validation.
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(recoverOpt),
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(slogAdapter(s.log), logOpts...), notHealth),
			unaryStatus,
			validator.UnaryServerInterceptor(),
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(recoverOpt),
			selector.StreamServerInterceptor(logging.StreamServerInterceptor(slogAdapter(s.log), logOpts...), notHealth),
			streamStatus,
			validator.StreamServerInterceptor(),
		),
	}
}

func unaryStatus(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	return resp, toStatus(err)
}

func streamStatus(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return toStatus(h(srv, ss))
}

func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
