package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
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
			"workers", cfg.Workers, "cache", cfg.CacheBytes.String(), "shm_ring", cfg.ShmRingBytes.String())
		sd.ready(ctx, d.srv.Socket())
	})
}

// daemon is the wired-up server and what it owns.
type daemon struct {
	srv   *feed.Server
	cache *cache.Cache
	roots []string
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
	if cfg.CacheBytes > 0 {
		store = cache.NewStore(local, c)
	}
	// feed.Options reads 0 as "the default"; in the configuration 0 means none.
	shmBytes, shmMin := int64(cfg.ShmRingBytes), int64(cfg.ShmMinBatchBytes)
	if shmBytes == 0 {
		shmBytes = -1
	}
	if shmMin == 0 {
		shmMin = -1
	}
	srv, err := feed.NewServer(feed.Options{
		Socket: cfg.Socket, AllowUIDs: uids, AllowGIDs: gids, Version: version,
		ShmRingBytes: shmBytes, ShmSpillAfter: time.Duration(cfg.ShmSpillAfter), ShmMinBatchBytes: shmMin,
	}, feed.Deps{
		Store: store, Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(cfg.Workers), Logger: log,
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	return &daemon{srv: srv, cache: c, roots: local.Roots()}, nil
}

func (d *daemon) close() { d.cache.Close() }
