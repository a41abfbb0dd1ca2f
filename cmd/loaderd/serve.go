package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/shard/objstore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sa, err := loadServe(args, stderr)
	if err != nil {
		return err
	}
	cfg := sa.cfg
	if sa.printConfig {
		b, err := cfg.marshal()
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	uids, gids, err := cfg.Check()
	if err != nil {
		return sa.explain(err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	d, err := newDaemon(cfg, uids, gids, log)
	if err != nil {
		return err
	}
	defer d.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	metricsDone, err := d.serveMetrics(ctx, cfg.MetricsAddr, log)
	if err != nil {
		return sa.explain(err)
	}
	defer func() { cancel(); <-metricsDone }()
	sd := newSystemd(log)
	defer sd.stop()
	stopping := context.AfterFunc(ctx, sd.stopping)
	defer stopping()
	return d.srv.Serve(ctx, func() {
		log.Info("loaderd ready", "socket", d.srv.Socket(), "version", version, "data_roots", d.roots,
			"workers", cfg.Workers, "memory", cfg.MemoryBytes.String(), "cache", cfg.CacheBytes.String(), "uploads", cfg.UploadBytes.String(),
			"shm_ring", cfg.ShmRingBytes.String(), "metrics", cfg.MetricsAddr,
			"decoder", d.decoder.Name(), "decoder_choice", d.decoderWhy)
		sd.ready(ctx, d.srv.Socket())
	})
}

// setMemoryLimit holds the Go runtime to the budget (a soft limit: the
// collector runs harder as the heap nears it), so that the garbage that
// decoding makes does not push the process past it; counted data stays
// within three quarters (prefetch.RuntimeShare), and shared-memory rings,
// outside the heap, lower the limit by their size. A GOMEMLIMIT in the
// environment wins.
func setMemoryLimit(mem *prefetch.Memory, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		log.Info("GOMEMLIMIT is set: the Go memory limit is left to it", "memory_bytes", Size(mem.Budget()).String())
		return
	}
	mem.SetRuntimeLimit(debug.SetMemoryLimit)
}

// daemon is the wired-up server and what it owns.
type daemon struct {
	srv        *feed.Server
	cache      *cache.Cache
	decoder    decode.Decoder
	decoderWhy string
	roots      []string
	metrics    *prometheus.Registry
	objects    *objstore.Store
}

func newDaemon(cfg Config, uids, gids []uint32, log *slog.Logger) (*daemon, error) {
	local, err := shard.NewLocalStore(cfg.DataRoots)
	if err != nil {
		return nil, err
	}
	// GPU discovery once, at start: for the decoder's choice and the status.
	gpus := decode.DiscoverGPUs()
	dec, why, err := decode.New(cfg.Decode, decode.Options{Discovery: &gpus})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pm := prefetch.NewMetrics(reg)
	mem := prefetch.NewMemory(int64(cfg.MemoryBytes))
	setMemoryLimit(mem, log)
	c, err := cache.New(cache.Options{Budget: int64(cfg.CacheBytes), Charge: mem.Charge})
	if err != nil {
		return nil, err
	}
	// Local files are read as they are: the kernel's page cache holds their
	// bytes, and the cache holds decoded blocks. Object stores go through
	// cache.NewStore, whose byte ranges save network round trips.
	// Remote reads are slow and billed: the byte-range cache matters most
	// there.
	objects := objstore.New(objstore.Options{AllowBuckets: cfg.AllowBuckets, S3Endpoint: cfg.S3Endpoint,
		GCSEndpoint: cfg.GCSEndpoint, Logger: log})
	remote := shard.ObserveReads(objects, pm.ObserveRead)
	if cfg.CacheBytes > 0 {
		remote = cache.NewStore(remote, c)
	}
	// Uploaded tables are held in memory, counted in the budget; reading
	// them costs nothing worth caching.
	var uploads *shard.MemStore
	remotes := map[string]shard.Store{"s3": remote, "gs": remote}
	if cfg.UploadBytes > 0 {
		uploads = shard.NewMemStore(int64(cfg.UploadBytes), mem.Charge)
		remotes[shard.MemScheme] = uploads
	}
	store := shard.Router{Local: shard.ObserveReads(local, pm.ObserveRead), Remote: remotes}
	// feed.Options reads 0 as "the default"; in the configuration 0 means none.
	shmBytes, shmMin := int64(cfg.ShmRingBytes), int64(cfg.ShmMinBatchBytes)
	if shmBytes == 0 {
		shmBytes = -1
	}
	if shmMin == 0 {
		shmMin = -1
	}
	opts := feed.Options{
		Socket: cfg.Socket, AllowUIDs: uids, AllowGIDs: gids, Version: version,
		LookaheadTTL: cfg.LookaheadTTL,
		ShmRingBytes: shmBytes, ShmSpillAfter: time.Duration(cfg.ShmSpillAfter), ShmMinBatchBytes: shmMin,
	}
	if cfg.NoLookahead {
		opts.MaxPrepared = -1
	}
	srv, err := feed.NewServer(opts, feed.Deps{
		Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(cfg.Workers),
		Memory: mem, Cache: c, Metrics: pm, Decoder: dec, DecoderChoice: why, GPUs: &gpus, Logger: log,
		Outputs: local, Uploads: uploads,
	})
	if err != nil {
		c.Close()
		_ = objects.Close()
		_ = dec.Close()
		return nil, err
	}
	reg.MustRegister(srv.Collector())
	return &daemon{srv: srv, cache: c, objects: objects, decoder: dec, decoderWhy: why, roots: local.Roots(), metrics: reg}, nil
}

// serveMetrics serves /metrics on addr until ctx ends; the returned channel
// closes when the HTTP server has stopped. An empty addr serves nothing.
func (d *daemon) serveMetrics(ctx context.Context, addr string, log *slog.Logger) (<-chan struct{}, error) {
	done := make(chan struct{})
	if addr == "" {
		close(done)
		return done, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, settingErr("metrics-addr", addr, "%v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics, promhttp.HandlerOpts{Registry: d.metrics}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(done)
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server ended", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() {
		// ctx is done: the shutdown gets a second of its own.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	})
	log.Info("serving metrics", "url", "http://"+l.Addr().String()+"/metrics")
	return done, nil
}

func (d *daemon) close() {
	d.cache.Close()
	_ = d.decoder.Close() // nothing to report on the way out
	_ = d.objects.Close()
}
