package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/user"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/loaderd/loaderd/feed"
	"github.com/loaderd/loaderd/prefetch"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
)

// Config is the daemon's whole configuration: `loaderd serve` flags, or the
// same settings in a YAML file (--config) whose keys are the flags' names.
// Flags override the file, which overrides the defaults.
//
// A new setting is one field here, tagged with its key, and one line in
// (*Config).flags under the same name (TestConfigKeysAreFlags checks they
// match). A size is a Size; anything else that reads and prints itself as
// text (encoding.TextUnmarshaler and TextMarshaler) works in both places too.
type Config struct {
	Socket    string   `yaml:"socket"`
	DataRoots []string `yaml:"data-root"`
	// MemoryBytes bounds the daemon's memory: queued batches, blocks being
	// read and decoded, the cache and encode buffers take up to three
	// quarters of it, and the Go runtime is held to the whole (0: a quarter
	// of the machine's memory or of its cgroup limit, at least 256 MiB).
	MemoryBytes Size `yaml:"memory-bytes"`
	// CacheBytes is the block cache's part of MemoryBytes (0: no cache; the
	// default is half of it, or less when that does not fit).
	CacheBytes Size `yaml:"cache-bytes"`
	// UploadBytes is the part of MemoryBytes that holds tables clients
	// upload (loaderd.from_items, from_pandas, ...); the least recently
	// used make room for new ones (0: uploads refused; the default is an
	// eighth of it, or less when that does not fit beside the cache).
	UploadBytes Size       `yaml:"upload-bytes"`
	Workers     int        `yaml:"workers"`
	Decode      string     `yaml:"decode"`
	LogLevel    slog.Level `yaml:"log-level"`
	AllowUIDs   []string   `yaml:"allow-uid"`
	AllowGIDs   []string   `yaml:"allow-gid"`
	// MetricsAddr is where /metrics is served over HTTP ("": nowhere).
	MetricsAddr string `yaml:"metrics-addr"`
	// LookaheadTTL is how long a rank's next epoch, prepared while it reads
	// the current one, waits to be asked for (0: 2 minutes); NoLookahead
	// prepares none.
	LookaheadTTL time.Duration `yaml:"lookahead-ttl"`
	NoLookahead  bool          `yaml:"no-lookahead"`
	// Shared memory (see feed.Options): the most one session's ring may
	// take, 0 turning shared memory off; how long a batch waits for the
	// client to free room in its ring before it goes over gRPC; and the
	// smallest batch that goes through the ring, 0 sending all of them.
	ShmRingBytes     Size     `yaml:"shm-ring-bytes"`
	ShmSpillAfter    Duration `yaml:"shm-spill-after"`
	ShmMinBatchBytes Size     `yaml:"shm-min-batch-bytes"`
	// Object stores: an allow-list of buckets (empty: whatever the
	// credentials reach) and endpoints of S3- or GCS-compatible servers.
	AllowBuckets []string `yaml:"allow-bucket"`
	S3Endpoint   string   `yaml:"s3-endpoint"`
	GCSEndpoint  string   `yaml:"gcs-endpoint"`
}

// autoCache is CacheBytes (and autoUpload UploadBytes) until EnsureDefaults
// sizes it from MemoryBytes; no file or flag can give a negative size.
const (
	autoCache  Size = -1
	autoUpload Size = -1
)

// defaultConfig holds the defaults that differ from the zero value and do not
// depend on the host; EnsureDefaults fills the others after file and flags.
func defaultConfig() Config {
	return Config{CacheBytes: autoCache, UploadBytes: autoUpload, Decode: "auto", LogLevel: slog.LevelInfo, ShmRingBytes: feed.DefaultShmRingBytes,
		ShmSpillAfter: Duration(time.Second), ShmMinBatchBytes: feed.DefaultShmMinBatchBytes}
}

// flags binds every setting to a flag of fs, with c's values as defaults.
func (c *Config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Socket, "socket", c.Socket, "Unix socket to listen on (default: $LOADERD_SOCKET, else $XDG_RUNTIME_DIR/loaderd/loaderd.sock)")
	fs.Var(&listFlag{v: &c.DataRoots}, "data-root", "directory datasets may be read from; repeat for several (default: the working directory)")
	fs.TextVar(&c.MemoryBytes, "memory-bytes", c.MemoryBytes, "memory budget of the daemon, e.g. 8GiB: queued batches, reads and the cache take up to three quarters, the Go runtime the rest (default: a quarter of the machine's or cgroup's memory, at least 256 MiB)")
	fs.TextVar(&c.CacheBytes, "cache-bytes", c.CacheBytes, "decoded-block cache budget, part of memory-bytes, e.g. 4GiB; 0 disables the cache (default: half of memory-bytes)")
	fs.TextVar(&c.UploadBytes, "upload-bytes", c.UploadBytes, "memory for tables clients upload (loaderd.from_items, from_pandas, ...), part of memory-bytes; the least recently used make room; 0 refuses uploads (default: an eighth of memory-bytes)")
	fs.IntVar(&c.Workers, "workers", c.Workers, "blocks read and images decoded at once, all sessions together (default: GOMAXPROCS)")
	fs.StringVar(&c.Decode, "decode", c.Decode, "image decoder: cpu, gpu, or auto (the GPU when one is usable, else the CPU)")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
	fs.Var(&listFlag{v: &c.AllowUIDs}, "allow-uid", "user (name or uid) allowed to connect besides the daemon's own and root; repeatable")
	fs.Var(&listFlag{v: &c.AllowGIDs}, "allow-gid", "group (name or gid) whose members may connect; repeatable")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (default: off)")
	fs.DurationVar(&c.LookaheadTTL, "lookahead-ttl", c.LookaheadTTL, "how long a rank's next epoch, prepared while it reads the current one, waits for the rank to ask for it (default: 2m)")
	fs.BoolVar(&c.NoLookahead, "no-lookahead", c.NoLookahead, "do not prepare ranks' next epochs ahead")
	fs.TextVar(&c.ShmRingBytes, "shm-ring-bytes", c.ShmRingBytes, "most memory one session's shared-memory ring may take (sized from its first batch); 0 turns shared memory off")
	fs.TextVar(&c.ShmSpillAfter, "shm-spill-after", c.ShmSpillAfter, "how long a batch waits for the client to free room in its ring before it goes over gRPC instead")
	fs.TextVar(&c.ShmMinBatchBytes, "shm-min-batch-bytes", c.ShmMinBatchBytes, "batches smaller than this go over gRPC, which costs them less; 0 sends every batch through shared memory")
	fs.Var(&listFlag{v: &c.AllowBuckets}, "allow-bucket", "object-store bucket datasets may be read from, as s3://name, gs://name or name; repeatable (default: any the credentials reach)")
	fs.StringVar(&c.S3Endpoint, "s3-endpoint", c.S3Endpoint, "URL of an S3-compatible server (default: AWS, or $AWS_ENDPOINT_URL)")
	fs.StringVar(&c.GCSEndpoint, "gcs-endpoint", c.GCSEndpoint, "URL of a GCS-compatible server (default: Google Cloud Storage)")
}

// EnsureDefaults fills what neither the file nor the flags set.
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
	if c.MemoryBytes == 0 {
		c.MemoryBytes = defaultMemoryBytes()
	}
	// The cache and uploads share what counted data may use, less room for
	// queues and reads; a size given wins over a default.
	most := maxCacheBytes(c.MemoryBytes)
	switch {
	case c.CacheBytes == autoCache && c.UploadBytes == autoUpload:
		c.UploadBytes = max(0, min(c.MemoryBytes/8, most))
		c.CacheBytes = max(0, min(c.MemoryBytes/2, most-c.UploadBytes))
	case c.CacheBytes == autoCache:
		c.CacheBytes = max(0, min(c.MemoryBytes/2, most-c.UploadBytes))
	case c.UploadBytes == autoUpload:
		c.UploadBytes = max(0, min(c.MemoryBytes/8, most-c.CacheBytes))
	}
	if c.LookaheadTTL == 0 {
		c.LookaheadTTL = 2 * time.Minute
	}
	if c.Decode == "" {
		c.Decode = "auto"
	}
}

// minPipelineBytes is the least memory left beside the cache for queues and
// reads: a few blocks and batches of a session.
const minPipelineBytes Size = 32 << 20

// minMemoryBytes is the smallest memory budget: the runtime's share and a
// pipeline beside an empty cache.
const minMemoryBytes Size = 96 << 20

// maxCacheBytes is the most of a memory budget the cache may take: what
// counted data may use, less room for queues and reads.
func maxCacheBytes(memoryBytes Size) Size {
	return Size(prefetch.NewMemory(int64(memoryBytes)).Limit()) - minPipelineBytes
}

// defaultMemoryBytes is a quarter of the machine's memory, or of the cgroup's
// limit when lower, and at least 256 MiB: the daemon shares the node with
// the trainers it feeds.
func defaultMemoryBytes() Size {
	total := int64(8 << 30) // when the machine will not say
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		total = int64(si.Totalram) * int64(si.Unit)
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			total = min(total, n)
		}
	}
	return Size(max(total/4, 256<<20))
}

// Validate reports settings that cannot work on any host, naming the key.
// Check does the same for what depends on this host.
func (c *Config) Validate() error {
	// A Unix socket address holds 107 bytes and a NUL.
	if n := len(c.Socket); n > 107 {
		return settingErr("socket", c.Socket, "%d bytes long; a Unix socket path holds at most 107", n)
	}
	if c.Workers < 1 {
		return settingErr("workers", c.Workers, "must be at least 1")
	}
	if c.MemoryBytes < minMemoryBytes {
		return settingErr("memory-bytes", c.MemoryBytes, "must be at least %s", minMemoryBytes)
	}
	if most := maxCacheBytes(c.MemoryBytes); c.CacheBytes > most {
		return settingErr("cache-bytes", c.CacheBytes, "does not fit in memory-bytes %s: the cache is part of the "+
			"memory budget, of which a quarter is left to the Go runtime and %s to queues and reads, so at most %s "+
			"(lower cache-bytes or raise memory-bytes)", c.MemoryBytes, minPipelineBytes, most)
	}
	if most := maxCacheBytes(c.MemoryBytes); c.CacheBytes <= most && c.UploadBytes > most-c.CacheBytes {
		return settingErr("upload-bytes", c.UploadBytes, "does not fit in memory-bytes %s beside cache-bytes %s: "+
			"together they may take at most %s (lower one of them or raise memory-bytes)", c.MemoryBytes, c.CacheBytes, most)
	}
	if c.LookaheadTTL < 0 {
		return settingErr("lookahead-ttl", c.LookaheadTTL, "must not be negative (no-lookahead turns look-ahead off)")
	}
	if c.Decode != "cpu" && c.Decode != "gpu" && c.Decode != "auto" {
		return settingErr("decode", c.Decode, "want cpu, gpu or auto")
	}
	for _, r := range c.DataRoots {
		if r == "" {
			return settingErr("data-root", `""`, "must name a directory")
		}
	}
	if c.ShmRingBytes != 0 && c.ShmRingBytes < 1<<16 {
		return settingErr("shm-ring-bytes", c.ShmRingBytes, "at least 64KiB, or 0 to turn shared memory off")
	}
	if c.ShmSpillAfter <= 0 {
		return settingErr("shm-spill-after", c.ShmSpillAfter, "must be positive")
	}
	return nil
}

// Check reports settings this host cannot honour: data roots that are not
// directories, users and groups it does not know. It returns the numeric ids.
func (c *Config) Check() (uids, gids []uint32, err error) {
	for _, r := range c.DataRoots {
		st, err := os.Stat(r)
		if err != nil {
			return nil, nil, settingErr("data-root", r, "%v", errors.Unwrap(err))
		}
		if !st.IsDir() {
			return nil, nil, settingErr("data-root", r, "not a directory")
		}
	}
	for _, u := range c.AllowUIDs {
		id, err := lookupID(u, func(name string) (string, error) {
			usr, err := user.Lookup(name)
			if err != nil {
				return "", err
			}
			return usr.Uid, nil
		})
		if err != nil {
			return nil, nil, settingErr("allow-uid", u, "%v", err)
		}
		uids = append(uids, id)
	}
	for _, g := range c.AllowGIDs {
		id, err := lookupID(g, func(name string) (string, error) {
			grp, err := user.LookupGroup(name)
			if err != nil {
				return "", err
			}
			return grp.Gid, nil
		})
		if err != nil {
			return nil, nil, settingErr("allow-gid", g, "%v", err)
		}
		gids = append(gids, id)
	}
	return uids, gids, nil
}

// lookupID reads a numeric id, or looks a name up.
func lookupID(s string, lookup func(string) (string, error)) (uint32, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	if s[0] >= '0' && s[0] <= '9' {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("not an id: %w", err)
		}
		return uint32(n), nil
	}
	id, err := lookup(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(id, 10, 32)
	return uint32(n), err
}

// settingError is a bad value of one setting. The loader says where the value
// came from: a flag, a line of the file, or the default.
type settingError struct {
	key    string
	value  string
	reason string
}

func (e *settingError) Error() string { return fmt.Sprintf("%s %s: %s", e.key, e.value, e.reason) }

func settingErr(key string, value any, format string, args ...any) error {
	return &settingError{key: key, value: fmt.Sprint(value), reason: fmt.Sprintf(format, args...)}
}

// serveArgs is what `loaderd serve`'s command line asks for.
type serveArgs struct {
	cfg         Config
	printConfig bool
	// origin says where a setting's value came from, by key: "--key" for a
	// flag, "FILE:LINE" for the config file; absent for a default.
	origin map[string]string
}

// loadServe builds the effective configuration from the defaults, the file
// named by --config, and the flags, in increasing precedence, and validates
// it.
func loadServe(args []string, stderr io.Writer) (serveArgs, error) {
	var configFile string
	var out serveArgs
	flagSet := func(c *Config, output io.Writer) *flag.FlagSet {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(output)
		fs.StringVar(&configFile, "config", "", "YAML file of settings, keys named as these flags (flags override it)")
		fs.BoolVar(&out.printConfig, "print-config", false, "print the effective configuration as YAML and exit")
		c.flags(fs)
		return fs
	}
	// The first pass finds --config and reports mistakes; the second applies
	// the flags over the file.
	scratch := defaultConfig()
	fs := flagSet(&scratch, stderr)
	if err := fs.Parse(args); err != nil {
		return out, err
	}
	if fs.NArg() > 0 {
		return out, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, fs.Args())
	}
	out.cfg = defaultConfig()
	out.origin = map[string]string{}
	if configFile != "" {
		lines, err := loadFile(configFile, &out.cfg)
		if err != nil {
			return out, err
		}
		for k, line := range lines {
			out.origin[k] = fmt.Sprintf("%s:%d", configFile, line)
		}
	}
	fs = flagSet(&out.cfg, io.Discard)
	if err := fs.Parse(args); err != nil {
		return out, err
	}
	fs.Visit(func(f *flag.Flag) { out.origin[f.Name] = "--" + f.Name })
	out.cfg.EnsureDefaults()
	return out, out.explain(out.cfg.Validate())
}

// explain says where a bad setting came from.
func (a serveArgs) explain(err error) error {
	var se *settingError
	if !errors.As(err, &se) {
		return err
	}
	switch o := a.origin[se.key]; {
	case strings.HasPrefix(o, "--"):
		return fmt.Errorf("--%s %s: %s", se.key, se.value, se.reason)
	case o != "":
		return fmt.Errorf("%s: %w", o, err)
	default:
		return fmt.Errorf("%w (the default; set --%s or %q in the config file)", err, se.key, se.key)
	}
}

// loadFile decodes a YAML config file over c, key by key, so that every error
// names the file, the line and the key. It returns each key's line.
func loadFile(path string, c *Config) (map[string]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return map[string]int{}, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: the config must be a mapping of settings (key: value)", path, root.Line)
	}
	fields := configFields(c)
	lines := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		field, ok := fields[k.Value]
		if !ok {
			return nil, fmt.Errorf("%s:%d: unknown setting %q (settings: %s)", path, k.Line, k.Value, strings.Join(configKeys(), ", "))
		}
		if prev, dup := lines[k.Value]; dup {
			return nil, fmt.Errorf("%s:%d: %s is set twice (first on line %d)", path, k.Line, k.Value, prev)
		}
		lines[k.Value] = k.Line
		if field.Kind() == reflect.Slice && v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
			// A list setting given one value, as on the command line.
			v = &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{v}, Line: v.Line}
		}
		if err := v.Decode(field.Addr().Interface()); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				msgs := make([]string, len(te.Errors))
				for i, m := range te.Errors {
					// yaml says "line N: ..."; the loader names the line itself.
					if strings.HasPrefix(m, "line ") {
						_, m, _ = strings.Cut(m, ": ")
					}
					msgs[i] = m
				}
				err = errors.New(strings.Join(msgs, "; "))
			}
			return nil, fmt.Errorf("%s:%d: %s: %w", path, v.Line, k.Value, err)
		}
	}
	return lines, nil
}

// configFields maps each key to its field of c.
func configFields(c *Config) map[string]reflect.Value {
	v := reflect.ValueOf(c).Elem()
	out := map[string]reflect.Value{}
	for i := range v.NumField() {
		out[yamlKey(v.Type().Field(i))] = v.Field(i)
	}
	return out
}

// configKeys lists the keys in declaration order.
func configKeys() []string {
	t := reflect.TypeFor[Config]()
	keys := make([]string, t.NumField())
	for i := range keys {
		keys[i] = yamlKey(t.Field(i))
	}
	return keys
}

func yamlKey(f reflect.StructField) string {
	k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return k
}

// marshal renders c as the YAML of a config file.
func (c *Config) marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# loaderd serve: effective configuration (flags > --config file > defaults)\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Size is a byte count written as in "4GiB", "512MB" or "1073741824".
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler (flags and YAML).
func (s *Size) UnmarshalText(b []byte) error {
	n, err := humanize.ParseBytes(string(b))
	if err != nil {
		return fmt.Errorf("size %q: want a byte count such as 4GiB, 512MB or 1073741824", b)
	}
	if n > math.MaxInt64 {
		return fmt.Errorf("size %q is too large", b)
	}
	*s = Size(n)
	return nil
}

// MarshalText implements encoding.TextMarshaler: exact, in the largest binary
// unit that divides the size.
func (s Size) MarshalText() ([]byte, error) {
	n := int64(s)
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return []byte(strconv.FormatInt(n/u.size, 10) + u.name), nil
		}
	}
	return []byte(strconv.FormatInt(n, 10)), nil
}

func (s Size) String() string { b, _ := s.MarshalText(); return string(b) }

// Duration is a time.Duration written as in "1s" or "200ms".
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler (flags and YAML).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: want one such as 1s or 200ms", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// listFlag is a repeatable flag. Its first use on the command line replaces
// the list (from the file or the default); later uses add to it.
type listFlag struct {
	v   *[]string
	set bool
}

func (f *listFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

func (f *listFlag) Set(s string) error {
	if !f.set {
		*f.v, f.set = nil, true
	}
	*f.v = append(*f.v, s)
	return nil
}
