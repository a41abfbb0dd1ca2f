package feed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/validator"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
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
	// GroupBytes bounds the rows one GroupBy holds to assemble its groups.
	GroupBytes int64
	// ShutdownGrace is how long open calls may run after a stop is asked for.
	ShutdownGrace time.Duration
	Version       string
}

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
	}
	return nil
}

// Deps are the server's collaborators, made by the caller.
type Deps struct {
	Store   shard.Store
	Formats shard.Formats
	Pool    *prefetch.Pool
	Mem     memory.Allocator
	Logger  *slog.Logger
	// Outputs opens the directories Write writes to; nil: no writes.
	Outputs shard.Outputs
}

// Server serves the feed API on a Unix socket.
type Server struct {
	opts     Options
	log      *slog.Logger
	pool     *prefetch.Pool
	mem      memory.Allocator
	datasets *datasets
	sessions *sessions
	writes   *writes
	outputs  shard.Outputs
	started  time.Time
	// base is canceled when the server stops; every session derives from it.
	base context.Context
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
	}
	return &Server{
		opts: opts, log: deps.Logger, pool: deps.Pool, mem: deps.Mem,
		datasets: newDatasets(shard.OpenOptions{Store: deps.Store, Formats: deps.Formats}, opts.Datasets),
		sessions: newSessions(),
		writes:   &writes{}, outputs: deps.Outputs,
	}, nil
}

// Socket is the path the server listens on.
func (s *Server) Socket() string { return s.opts.Socket }

// Serve listens on the socket and serves until ctx is done; then it stops
// taking calls, cancels open sessions, waits up to ShutdownGrace, removes the
// socket and returns nil. ready, if not nil, is called once listening.
//
// The socket also serves the standard gRPC health service (grpc.health.v1):
// SERVING, for the server as a whole ("") and for the feed service, from the
// moment it listens; NOT_SERVING as soon as it begins to stop.
func (s *Server) Serve(ctx context.Context, ready func()) error {
	l, err := listen(s.opts.Socket, s.opts.SocketDirMode)
	if err != nil {
		return err
	}
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.base = base
	s.started = time.Now()

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
