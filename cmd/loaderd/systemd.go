package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	sdaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/loaderd/loaderd/feed"
)

// systemd keeps a Type=notify service manager informed (sd_notify over
// $NOTIFY_SOCKET): READY=1 once the socket listens, STOPPING=1 when shutdown
// begins, and, when the unit sets WatchdogSec, WATCHDOG=1 every half period
// while the daemon answers its own health check over its socket, so a wedged
// daemon is restarted rather than left hanging. Without $NOTIFY_SOCKET every
// call does nothing.
type systemd struct {
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newSystemd(log *slog.Logger) *systemd { return &systemd{log: log} }

func (s *systemd) notify(state string) {
	if _, err := sdaemon.SdNotify(false, state); err != nil {
		s.log.Warn("telling systemd failed", "state", state, "err", err)
	}
}

// ready reports readiness and starts the watchdog pings, which run until ctx
// ends or stop is called.
func (s *systemd) ready(ctx context.Context, socket string) {
	s.notify(sdaemon.SdNotifyReady + "\nSTATUS=serving on " + socket)
	interval, err := sdaemon.SdWatchdogEnabled(false)
	if err != nil {
		s.log.Warn("systemd watchdog settings", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchdog(ctx, socket, interval)
	}()
}

func (s *systemd) stopping() { s.notify(sdaemon.SdNotifyStopping + "\nSTATUS=stopping") }

// stop ends the watchdog pings and waits for them.
func (s *systemd) stop() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

func (s *systemd) watchdog(ctx context.Context, socket string, interval time.Duration) {
	c, err := feed.Dial(socket)
	if err != nil {
		s.log.Error("systemd watchdog cannot reach the daemon's socket; systemd will restart it", "err", err)
		return
	}
	defer c.Close()
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, interval/4)
		st, err := c.Health(cctx, "")
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil || st != "SERVING" {
			s.log.Warn("health check failed: not pinging the systemd watchdog", "status", st, "err", err)
			continue
		}
		s.notify(sdaemon.SdNotifyWatchdog)
	}
}
