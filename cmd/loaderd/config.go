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

	"github.com/dustin/go-humanize"
	"github.com/loaderd/loaderd/feed"
	"go.yaml.in/yaml/v3"
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
	Socket     string     `yaml:"socket"`
	DataRoots  []string   `yaml:"data-root"`
	CacheBytes Size       `yaml:"cache-bytes"`
	Workers    int        `yaml:"workers"`
	LogLevel   slog.Level `yaml:"log-level"`
	AllowUIDs  []string   `yaml:"allow-uid"`
	AllowGIDs  []string   `yaml:"allow-gid"`
	// Object stores: an allow-list of buckets (empty: whatever the
	// credentials reach) and endpoints of S3- or GCS-compatible servers.
	AllowBuckets []string `yaml:"allow-bucket"`
	S3Endpoint   string   `yaml:"s3-endpoint"`
	GCSEndpoint  string   `yaml:"gcs-endpoint"`
}

// defaultConfig holds the defaults that differ from the zero value and do not
// depend on the host; EnsureDefaults fills the others after file and flags.
func defaultConfig() Config {
	return Config{CacheBytes: 1 << 30, LogLevel: slog.LevelInfo}
}

// flags binds every setting to a flag of fs, with c's values as defaults.
func (c *Config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Socket, "socket", c.Socket, "Unix socket to listen on (default: $LOADERD_SOCKET, else $XDG_RUNTIME_DIR/loaderd/loaderd.sock)")
	fs.Var(&listFlag{v: &c.DataRoots}, "data-root", "directory datasets may be read from; repeat for several (default: the working directory)")
	fs.TextVar(&c.CacheBytes, "cache-bytes", c.CacheBytes, "block cache budget, e.g. 4GiB; 0 disables the cache")
	fs.IntVar(&c.Workers, "workers", c.Workers, "blocks read and decoded at once, all sessions together (default: GOMAXPROCS)")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
	fs.Var(&listFlag{v: &c.AllowUIDs}, "allow-uid", "user (name or uid) allowed to connect besides the daemon's own and root; repeatable")
	fs.Var(&listFlag{v: &c.AllowGIDs}, "allow-gid", "group (name or gid) whose members may connect; repeatable")
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
	for _, r := range c.DataRoots {
		if r == "" {
			return settingErr("data-root", `""`, "must name a directory")
		}
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
