package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"github.com/loaderd/loaderd/shard/objstore"
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
	sd := newSystemd(log)
	defer sd.stop()
	stopping := context.AfterFunc(ctx, sd.stopping)
	defer stopping()
	return d.srv.Serve(ctx, func() {
		log.Info("loaderd ready", "socket", d.srv.Socket(), "version", version, "data_roots", d.roots,
			"workers", cfg.Workers, "cache", cfg.CacheBytes.String())
		sd.ready(ctx, d.srv.Socket())
	})
}

// daemon is the wired-up server and what it owns.
type daemon struct {
	srv     *feed.Server
	cache   *cache.Cache
	objects *objstore.Store
	roots   []string
}

func newDaemon(cfg Config, uids, gids []uint32, log *slog.Logger) (*daemon, error) {
	local, err := shard.NewLocalStore(cfg.DataRoots)
	if err != nil {
		return nil, err
	}
	c, err := cache.New(int64(cfg.CacheBytes))
	if err != nil {
		return nil, err
	}
	var store shard.Store = local
	// Remote reads are slow and billed: the block cache matters most there.
	objects := objstore.New(objstore.Options{AllowBuckets: cfg.AllowBuckets, S3Endpoint: cfg.S3Endpoint,
		GCSEndpoint: cfg.GCSEndpoint, Logger: log})
	var remote shard.Store = objects
	if cfg.CacheBytes > 0 {
		store = cache.NewStore(local, c)
		remote = cache.NewStore(objects, c)
	}
	store = shard.Router{Local: store, Remote: map[string]shard.Store{"s3": remote, "gs": remote}}
	srv, err := feed.NewServer(feed.Options{
		Socket: cfg.Socket, AllowUIDs: uids, AllowGIDs: gids, Version: version,
	}, feed.Deps{
		Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(cfg.Workers), Logger: log,
		Outputs: local,
	})
	if err != nil {
		c.Close()
		_ = objects.Close()
		return nil, err
	}
	return &daemon{srv: srv, cache: c, objects: objects, roots: local.Roots()}, nil
}

func (d *daemon) close() {
	d.cache.Close()
	_ = d.objects.Close()
}
