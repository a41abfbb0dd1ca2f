package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every setting has a flag of the same name, and every flag but the
// file's own is a setting: the file's keys mirror the flags.
func TestConfigKeysAreFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.flags(fs)
	var flags []string
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f.Name) })
	keys := configKeys()
	slices.Sort(flags)
	slices.Sort(keys)
	if !slices.Equal(flags, keys) {
		t.Fatalf("flags %v, yaml keys %v", flags, keys)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "loaderd.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	sa, err := loadServe(args, io.Discard)
	return sa.cfg, err
}

func TestConfigPrecedence(t *testing.T) {
	t.Setenv("LOADERD_SOCKET", "/env/loaderd.sock")
	a, b := t.TempDir(), t.TempDir()
	// Defaults.
	c, err := load(t, "--data-root", a)
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/env/loaderd.sock" || c.MemoryBytes != defaultMemoryBytes() || c.MemoryBytes < 256<<20 ||
		c.CacheBytes != min(c.MemoryBytes/2, maxCacheBytes(c.MemoryBytes)) || c.Workers < 1 ||
		c.LogLevel.String() != "INFO" || c.LookaheadTTL != 2*time.Minute || c.NoLookahead || c.MetricsAddr != "" {
		t.Fatalf("defaults: %+v", c)
	}
	// The file over the defaults; flags over the file. A list flag replaces
	// the file's list, and adds to itself when repeated.
	file := writeConfig(t, "socket: /file/s.sock\ndata-root: ["+a+"]\nmemory-bytes: 8GiB\ncache-bytes: 2GiB\nworkers: 3\nlog-level: debug\nallow-gid: [0, root]\n")
	c, err = load(t, "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/file/s.sock" || !slices.Equal(c.DataRoots, []string{a}) || c.CacheBytes != 2<<30 ||
		c.Workers != 3 || c.LogLevel.String() != "DEBUG" || !slices.Equal(c.AllowGIDs, []string{"0", "root"}) {
		t.Fatalf("from the file: %+v", c)
	}
	c, err = load(t, "--workers", "5", "--config", file, "--data-root", b, "--data-root", a, "--cache-bytes", "0")
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/file/s.sock" || !slices.Equal(c.DataRoots, []string{b, a}) || c.CacheBytes != 0 || c.Workers != 5 {
		t.Fatalf("flags over the file: %+v", c)
	}
	// A single value for a list, as on the command line.
	c, err = load(t, "--config", writeConfig(t, "data-root: "+b+"\n"))
	if err != nil || !slices.Equal(c.DataRoots, []string{b}) {
		t.Fatalf("scalar list: %+v, %v", c, err)
	}
}

// The cache and uploads share what counted data may use: a size given wins,
// the other's default fits beside it.
func TestUploadBytesBesideTheCache(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		flags         string
		cache, upload Size
	}{
		{"", 512 << 20, 128 << 20},
		{"--cache-bytes 700MiB", 700 << 20, 36 << 20},
		{"--cache-bytes 736MiB", 736 << 20, 0},
		{"--upload-bytes 300MiB", 436 << 20, 300 << 20},
		{"--upload-bytes 0", 512 << 20, 0},
	} {
		args := append([]string{"--data-root", dir, "--memory-bytes", "1GiB"}, strings.Fields(tc.flags)...)
		c, err := load(t, args...)
		if err != nil {
			t.Fatalf("%s: %v", tc.flags, err)
		}
		if c.CacheBytes != tc.cache || c.UploadBytes != tc.upload {
			t.Errorf("%q: cache %s, uploads %s; want %s and %s", tc.flags, c.CacheBytes, c.UploadBytes, tc.cache, tc.upload)
		}
	}
}

// Every mistake names where it is: the file and line, or the flag.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ file, flags, want string }{
		{"cache-byte: 1GiB\n", "", ":1: unknown setting \"cache-byte\" (settings: socket, data-root, memory-bytes, cache-bytes"},
		{"socket: /s\n\ncache-bytes: lots\n", "", ":3: cache-bytes: size \"lots\": want a byte count"},
		{"workers: [1]\n", "", ":1: workers: cannot unmarshal !!seq into int"},
		{"workers: -1\n", "", ":1: workers -1: must be at least 1"},
		{"workers: 1\nworkers: 2\n", "", ":2: workers is set twice (first on line 1)"},
		{"- workers\n", "", ":1: the config must be a mapping"},
		{"log-level: loud\n", "", ":1: log-level: slog: level string \"loud\": unknown name"},
		{"workers: -1\n", "--workers -2", "--workers -2: must be at least 1"},
		{"socket: /" + strings.Repeat("s", 120) + "\n", "", ":1: socket /sss"},
		{"", "--cache-bytes 1x", "invalid value \"1x\" for flag -cache-bytes"},
		{"", "extra", "serve takes no arguments"},
		{"memory-bytes: 64MiB\n", "", ":1: memory-bytes 64MiB: must be at least 96MiB"},
		{"memory-bytes: 1GiB\n", "--cache-bytes 900MiB",
			"--cache-bytes 900MiB: does not fit in memory-bytes 1GiB: the cache is part of the memory budget, of which a quarter is left to the Go runtime and 32MiB to queues and reads, so at most 736MiB"},
		{"memory-bytes: 1GiB\ncache-bytes: 800MiB\n", "", ":2: cache-bytes 800MiB: does not fit in memory-bytes 1GiB"},
		{"memory-bytes: 1GiB\n", "--cache-bytes 700MiB --upload-bytes 100MiB",
			"--upload-bytes 100MiB: does not fit in memory-bytes 1GiB beside cache-bytes 700MiB: together they may take at most 736MiB"},
		{"memory-bytes: 1GiB\n", "--cache-bytes 1 --upload-bytes 7EiB", ": does not fit in memory-bytes 1GiB beside cache-bytes 1"},
		{"lookahead-ttl: -1s\n", "", ":1: lookahead-ttl -1s: must not be negative"},
		{"lookahead-ttl: soon\n", "", ":1: lookahead-ttl:"},
	} {
		args := []string{"--config", writeConfig(t, tc.file), "--data-root", dir}
		if tc.flags != "" {
			args = append(args, strings.Fields(tc.flags)...)
		}
		_, err := load(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q, flags %q: got %v, want %q", tc.file, tc.flags, err, tc.want)
		}
	}
	if _, err := load(t, "--config", filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// What this host must provide is checked when serving, naming the key.
func TestConfigCheck(t *testing.T) {
	file := writeConfig(t, "data-root: /no/such/dir\n")
	sa, err := loadServe([]string{"--config", file}, io.Discard)
	if err != nil {
		t.Fatal(err) // --print-config works for a config of another host
	}
	_, _, err = sa.cfg.Check()
	if err = sa.explain(err); err == nil || !strings.Contains(err.Error(), file+":1: data-root /no/such/dir: no such file or directory") {
		t.Fatalf("missing root: %v", err)
	}
	c := Config{DataRoots: []string{t.TempDir()}, AllowUIDs: []string{"0", "root"}, AllowGIDs: []string{"root", "7"}}
	uids, gids, err := c.Check()
	if err != nil || !slices.Equal(uids, []uint32{0, 0}) || !slices.Equal(gids, []uint32{0, 7}) {
		t.Fatalf("ids: %v %v %v", uids, gids, err)
	}
	c.AllowGIDs = []string{"no-such-group-here"}
	if _, _, err := c.Check(); err == nil || !strings.Contains(err.Error(), "allow-gid no-such-group-here") {
		t.Fatalf("unknown group: %v", err)
	}
}

// --print-config prints a file that loads back to the same configuration.
func TestPrintConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	args := []string{"serve", "--print-config", "--socket", dir + "/s.sock", "--data-root", dir, "--memory-bytes", "4GiB",
		"--cache-bytes", "1.5GiB", "--workers", "3", "--log-level", "warn", "--allow-uid", "0", "--allow-gid", "root",
		"--lookahead-ttl", "90s", "--metrics-addr", "127.0.0.1:9464"}
	if err := run(t.Context(), args, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"memory-bytes: 4GiB\n", "cache-bytes: 1536MiB\n", "workers: 3\n", "log-level: WARN\n",
		"data-root:\n  - " + dir + "\n", "lookahead-ttl: 1m30s\n", "metrics-addr: 127.0.0.1:9464\n", "no-lookahead: false\n"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("printed config lacks %q:\n%s", want, out.String())
		}
	}
	var again bytes.Buffer
	if err := run(t.Context(), []string{"serve", "--print-config", "--config", writeConfig(t, out.String())}, &again, io.Discard); err != nil {
		t.Fatal(err)
	}
	if again.String() != out.String() {
		t.Fatalf("round trip changed the config:\n%s\nversus\n%s", out.String(), again.String())
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]string{"4GiB": "4GiB", "1.5GiB": "1536MiB", "512MB": "500000KiB", "1000": "1000", "1073741824": "1GiB", "0": "0", "3KiB": "3KiB"} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil {
			t.Fatal(in, err)
		}
		if s.String() != want {
			t.Errorf("%s prints as %s, want %s", in, s, want)
		}
	}
	var s Size
	for _, bad := range []string{"", "-1", "1x", "99999999999EiB"} {
		if err := s.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("size %q accepted", bad)
		}
	}
}

// A config file is operator input: whatever it holds, loading it returns an
// error or a configuration, never a panic, and a valid configuration prints
// as a file that loads back to itself.
func FuzzLoadConfig(f *testing.F) {
	for _, seed := range []string{
		"socket: /run/loaderd/loaderd.sock\ndata-root: [/data]\ncache-bytes: 8GiB\nworkers: 0\nlog-level: info\nallow-gid: [loaderd]\n",
		"data-root: /data\ncache-bytes: 1073741824\n",
		"cache-bytes: 1.5GiB\nlog-level: DEBUG+2\nallow-uid: [0, 1000]\n",
		"workers: [1]\n", "- a\n", "a: [\n", "socket: ~\n", "{}", "", "cache-bytes: -1\n", "x: 1\nx: 2\n",
		"data-root: &a [/x]\nallow-uid: *a\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := defaultConfig()
		if _, err := loadFile(path, &c); err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		c.EnsureDefaults()
		if c.Validate() != nil {
			return
		}
		out, err := c.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again := defaultConfig()
		if _, err := loadFile(path, &again); err != nil {
			t.Fatalf("printed config does not load: %v\n%s", err, out)
		}
		again.EnsureDefaults()
		if out2, err := again.marshal(); err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config (%v):\n%s\nversus\n%s", err, out, out2)
		}
	})
}
