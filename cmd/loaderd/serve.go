package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/loaderd/loaderd/cache"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
)

// Config is the daemon's whole configuration.
type Config struct {
	Socket     string
	DataRoots  []string
	CacheBytes int64
	Workers    int
	LogLevel   slog.Level
	AllowUIDs  []uint32
	AllowGIDs  []uint32
}

// EnsureDefaults fills what was not set.
func (c *Config) EnsureDefaults() {
	if c.Socket == "" {
		c.Socket = feed.DefaultSocket()
	}
	if len(c.DataRoots) == 0 {
		if wd, err := os.Getwd(); err == nil {
			c.DataRoots = []string{wd}
		}
	}
	if c.Workers == 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
}

// Validate reports a configuration that cannot work, naming the setting.
func (c *Config) Validate() error {
	if c.Workers < 1 {
		return fmt.Errorf("--workers %d: must be at least 1", c.Workers)
	}
	if c.CacheBytes < 0 {
		return fmt.Errorf("--cache-bytes %d: must not be negative", c.CacheBytes)
	}
	for _, r := range c.DataRoots {
		st, err := os.Stat(r)
		if err != nil {
			return fmt.Errorf("--data-root %s: %w", r, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("--data-root %s: not a directory", r)
		}
	}
	return nil
}

// sizeFlag parses sizes such as 4GiB, 512MB or 1073741824.
type sizeFlag struct{ v *int64 }

func (f sizeFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return humanize.IBytes(uint64(*f.v))
}

func (f sizeFlag) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("size %q: %w", s, err)
	}
	*f.v = int64(n)
	return nil
}

type listFlag struct{ v *[]string }

func (f listFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

func (f listFlag) Set(s string) error { *f.v = append(*f.v, s); return nil }

type idsFlag struct{ v *[]uint32 }

func (f idsFlag) String() string { return "" }

func (f idsFlag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("id %q: %w", s, err)
	}
	*f.v = append(*f.v, uint32(n))
	return nil
}

func parseServe(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Socket, "socket", "", "Unix socket to listen on (default: $LOADERD_SOCKET, else $XDG_RUNTIME_DIR/loaderd/loaderd.sock)")
	fs.Var(listFlag{&c.DataRoots}, "data-root", "directory datasets may be read from; repeat for several (default: the working directory)")
	c.CacheBytes = 1 << 30
	fs.Var(sizeFlag{&c.CacheBytes}, "cache-bytes", "block cache budget, e.g. 4GiB; 0 disables the cache")
	fs.IntVar(&c.Workers, "workers", 0, "blocks read and decoded at once, all sessions together (default: GOMAXPROCS)")
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.Var(idsFlag{&c.AllowUIDs}, "allow-uid", "uid allowed to connect besides the daemon's own and root; repeatable")
	fs.Var(idsFlag{&c.AllowGIDs}, "allow-gid", "gid whose members may connect; repeatable")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, fs.Args())
	}
	c.EnsureDefaults()
	return c, c.Validate()
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseServe(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	d, err := newDaemon(cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	return d.srv.Serve(ctx, func() {
		log.Info("loaderd ready", "socket", d.srv.Socket(), "version", version, "data_roots", d.roots,
			"workers", cfg.Workers, "cache", humanize.IBytes(uint64(cfg.CacheBytes)))
	})
}

// daemon is the wired-up server and what it owns.
type daemon struct {
	srv   *feed.Server
	cache *cache.Cache
	roots []string
}

func newDaemon(cfg Config, log *slog.Logger) (*daemon, error) {
	local, err := shard.NewLocalStore(cfg.DataRoots)
	if err != nil {
		return nil, err
	}
	c, err := cache.New(cfg.CacheBytes)
	if err != nil {
		return nil, err
	}
	var store shard.Store = local
	if cfg.CacheBytes > 0 {
		store = cache.NewStore(local, c)
	}
	srv, err := feed.NewServer(feed.Options{
		Socket: cfg.Socket, AllowUIDs: cfg.AllowUIDs, AllowGIDs: cfg.AllowGIDs, Version: version,
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
