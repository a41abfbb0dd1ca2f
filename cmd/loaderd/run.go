package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/loaderd/loaderd/feed"
)

// errUsage marks a command-line mistake: exit code 2, as flag does.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

const usage = `loaderd — a per-node data-loading daemon for ML training

Usage:
  loaderd serve   [flags]   run the daemon (loaderd serve -h for flags)
  loaderd demo    [flags]   write a sample dataset, serve it, stream it to 4 ranks, verify, report
  loaderd status  [--socket PATH]   sessions, throughput and plans of a running daemon
  loaderd health  [--socket PATH] [--timeout D]   exit 0 when the daemon serves (for probes)
  loaderd version
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stdout, stderr)
	case "health":
		return healthCmd(ctx, rest, stdout, stderr)
	case "demo":
		return demo(ctx, rest, stdout, stderr)
	case "status":
		return statusCmd(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "loaderd %s (%s)\n", version, runtime.Version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

// daemonFlags are how client commands find the daemon: --socket, else the
// socket of a --config file (the one serve uses), else the default.
type daemonFlags struct{ socket, config *string }

func addDaemonFlags(fs *flag.FlagSet) daemonFlags {
	return daemonFlags{
		socket: fs.String("socket", "", "daemon socket (default: the --config file's, else $LOADERD_SOCKET, else per-user runtime dir)"),
		config: fs.String("config", "", "the daemon's config file, to take its socket from"),
	}
}

func (f daemonFlags) resolve() (string, error) {
	if *f.socket != "" {
		return *f.socket, nil
	}
	cfg := defaultConfig()
	if *f.config != "" {
		if _, err := loadFile(*f.config, &cfg); err != nil {
			return "", err
		}
	}
	cfg.EnsureDefaults()
	return cfg.Socket, nil
}

// dial parses args into fs and connects to the daemon they name.
func (df daemonFlags) dial(fs *flag.FlagSet, args []string) (*feed.Client, string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	socket, err := df.resolve()
	if err != nil {
		return nil, "", err
	}
	c, err := feed.Dial(socket)
	return c, socket, err
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	df := addDaemonFlags(fs)
	c, socket, err := df.dial(fs, args)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("no daemon answers on %s (start one with `loaderd serve --socket %s`): %w", socket, socket, err)
	}
	return printStatus(stdout, socket, st)
}

// printStatus writes a status report: one row per session, the plans, then
// the cache, memory and look-ahead.
func printStatus(w io.Writer, socket string, st feed.StatusReport) error {
	fmt.Fprintf(w, "loaderd %s on %s, up %s, %d sessions\n", st.Version, socket,
		(time.Duration(st.Uptime) * time.Second).Round(time.Second), len(st.Sessions))
	if len(st.Sessions) > 0 {
		slices.SortFunc(st.Sessions, func(a, b feed.SessionReport) int {
			return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.Rank, b.Rank), cmp.Compare(a.ID, b.ID))
		})
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tJOB\tRANK\tEPOCH\tBATCHES\tROWS\tMB\tBATCHES/S\tSTALL %\tQUEUE\tPREPARED\tTRANSPORT")
		for _, s := range st.Sessions {
			prepared := "no"
			if s.Prepared {
				prepared = "yes"
			}
			tr := s.Transport.String()
			if s.Transport == feed.TransportShm {
				// What the client holds of its ring, and how long the daemon
				// waited for it (back-pressure).
				tr = fmt.Sprintf("shm %.1f/%.1f MB held, %d inline, waited %.1fs", float64(s.ShmBytesHeld)/1e6,
					float64(s.ShmRingBytes)/1e6, s.ShmInline, s.ShmWaitSeconds)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%d/%d\t%s\t%s\n", s.ID, cmp.Or(s.Job, "-"),
				s.Rank, s.World, s.Epoch, s.Batches, s.Rows, float64(s.Bytes)/1e6, s.BatchesPerSecond,
				100*s.StallFraction(), s.QueueDepth, s.QueueCap, prepared, tr)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		// Every node of a multi-node job should show the same PLAN for a job
		// and epoch; its RANKS are the global ranks this node serves.
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tEPOCH\tWORLD\tPLAN\tRANKS HERE")
		for _, p := range st.Plans {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", p.Job, p.Epoch, p.World, p.Fingerprint, strings.Trim(fmt.Sprint(p.Ranks), "[]"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(st.Writes) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WRITE\tJOB\tFORMAT\tSTATE\tROWS\tFILES\tMB\tSECONDS\tDIR")
		for _, wr := range st.Writes {
			state := wr.State
			if wr.Error != "" {
				state += ": " + wr.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%.1f\t%.1f\t%s\n", wr.ID, cmp.Or(wr.Job, "-"), wr.Format, state,
				wr.Rows, wr.TotalRows, wr.Files, float64(wr.Bytes)/1e6, wr.Seconds, wr.Dir)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	if c := st.Cache; c != nil {
		fmt.Fprintf(w, "cache:     %.1f%% hit rate (%d hits, %d misses), %s of %s, %d evictions, %d loads in %.1fs\n",
			100*c.HitRate(), c.Hits, c.Misses, humanize.IBytes(uint64(c.Bytes)), humanize.IBytes(uint64(c.Budget)),
			c.Evictions, c.Loads, c.LoadSeconds)
	} else {
		fmt.Fprintln(w, "cache:     off")
	}
	if m := st.Memory; m != nil {
		fmt.Fprintf(w, "memory:    %s in use of %s for data, %s budget (+%s idle for reuse, %s other), reads waited %.1fs; RSS %s, peak %s\n",
			humanize.IBytes(uint64(m.InUse)), humanize.IBytes(uint64(m.DataLimit)), humanize.IBytes(uint64(m.Budget)),
			humanize.IBytes(uint64(m.Idle)), humanize.IBytes(uint64(max(m.Charged, 0))), m.WaitSeconds,
			humanize.IBytes(uint64(m.RSS)), humanize.IBytes(uint64(m.PeakRSS)))
	}
	if u := st.Uploads; u != nil {
		fmt.Fprintf(w, "uploads:   %d tables, %s of %s (%d uploaded, %d dropped for room)\n",
			u.Tables, humanize.IBytes(uint64(u.Bytes)), humanize.IBytes(uint64(u.Budget)), u.Uploads, u.Evictions)
	}
	la := st.Lookahead
	fmt.Fprintf(w, "lookahead: %d epochs prepared, %d claimed, %d expired, %d waiting\n",
		la.Prepared, la.Claimed, la.Expired, la.Waiting)
	d := st.Decoder
	fmt.Fprintf(w, "decoder:   %s: %s\n", cmp.Or(d.Name, "-"), cmp.Or(d.Choice, "-"))
	gpus := "none (" + cmp.Or(d.GPUError, "the driver lists none") + ")"
	if len(d.GPUs) > 0 {
		var names []string
		for _, g := range d.GPUs {
			names = append(names, fmt.Sprintf("%d: %s, %s, sm %d.%d", g.Index, g.Name, humanize.IBytes(g.MemoryBytes), g.Major, g.Minor))
		}
		gpus = fmt.Sprintf("driver %s; %s", d.Driver, strings.Join(names, "; "))
	}
	_, err := fmt.Fprintf(w, "gpus:      %s\n", gpus)
	return err
}

// healthCmd asks the daemon's gRPC health service, for probes (Kubernetes
// exec probes, scripts): exit 0 and "SERVING" when it serves, 1 otherwise.
func healthCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	df := addDaemonFlags(fs)
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	service := fs.String("service", "", "service to ask about, e.g. loaderd.feed.v1.Feed (default: the daemon as a whole)")
	c, socket, err := df.dial(fs, args)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := c.Health(ctx, *service)
	if err != nil {
		return fmt.Errorf("no daemon answers on %s: %w", socket, err)
	}
	fmt.Fprintln(stdout, st)
	if st != "SERVING" {
		return fmt.Errorf("daemon on %s is %s", socket, st)
	}
	return nil
}
