package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"
	"time"

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
  loaderd status  [--socket PATH]   sessions and throughput of a running daemon
  loaderd version
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stderr)
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

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", feed.DefaultSocket(), "daemon socket (default: $LOADERD_SOCKET, else per-user runtime dir)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := feed.Dial(*socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("no daemon answers on %s (start one with `loaderd serve --socket %s`): %w", *socket, *socket, err)
	}
	fmt.Fprintf(stdout, "loaderd %s on %s, up %s, %d sessions\n", st.Version, *socket,
		(time.Duration(st.Uptime) * time.Second).Round(time.Second), len(st.Sessions))
	if len(st.Sessions) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tJOB\tRANK\tEPOCH\tBATCHES\tROWS\tMB\tBATCHES/S\tQUEUE")
	for _, s := range st.Sessions {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%d\t%d\t%.1f\t%.1f\t%d\n", s.ID, s.Job, s.Rank, s.World, s.Epoch,
			s.Batches, s.Rows, float64(s.Bytes)/1e6, s.BatchesPerSecond, s.QueueDepth)
	}
	return tw.Flush()
}
