package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/loaderd/loaderd/cache"
	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/prefetch"
	"github.com/loaderd/loaderd/shard"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Two daemons ("nodes") over the same files, one behind a block cache, agree
// on every plan: the Plan RPC and each stream's header carry the same
// fingerprint on both.
func TestPlansAgreeAcrossDaemons(t *testing.T) {
	dir := t.TempDir()
	writeIDs(t, filepath.Join(dir, "a.parquet"), 1000)
	writeIDs(t, filepath.Join(dir, "b.parquet"), 333)
	nodeA := startServer(t, dir)
	local, err := shard.NewLocalStore([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := cache.New(cache.Options{Budget: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer blocks.Close()
	nodeB := startServerDeps(t, Options{Socket: filepath.Join(t.TempDir(), "b.sock")},
		Deps{Store: cache.NewStore(local, blocks), Formats: shard.DefaultFormats(), Pool: prefetch.NewPool(1)})
	ca, _ := Dial(nodeA.Socket())
	defer ca.Close()
	cb, _ := Dial(nodeB.Socket())
	defer cb.Close()
	ctx := context.Background()

	spec := shard.Spec{Format: "parquet", URIs: []string{dir + "/*.parquet"}, Shuffle: &shard.Shuffle{Seed: 3, WindowRows: 50}}
	const world = 5
	fps := map[int64]string{}
	for epoch := int64(0); epoch < 2; epoch++ {
		for rank := 0; rank < world; rank++ {
			req := StreamRequest{Spec: spec, Rank: rank, World: world, Epoch: epoch, BatchSize: 100, Job: "j"}
			pa, err := ca.Plan(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			pb, err := cb.Plan(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if pa != pb {
				t.Fatalf("epoch %d rank %d: node A plans %+v, node B %+v", epoch, rank, pa, pb)
			}
			if pa.Total != 1333 || pa.NumSamples != 267 || pa.Padding != int64(2*(rank/4)) {
				t.Fatalf("epoch %d rank %d: %+v", epoch, rank, pa)
			}
			if prev, ok := fps[epoch]; ok && prev != pa.Fingerprint {
				t.Fatalf("epoch %d: rank %d sees plan %s, rank 0 %s", epoch, rank, pa.Fingerprint, prev)
			}
			fps[epoch] = pa.Fingerprint
			// The stream that serves the share says the same.
			br, err := cb.Stream(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if br.PlanFingerprint != pa.Fingerprint {
				t.Fatalf("stream header plan %s, Plan RPC %s", br.PlanFingerprint, pa.Fingerprint)
			}
			drain(t, br)
		}
	}
	if fps[0] == fps[1] {
		t.Fatal("two shuffled epochs with one plan fingerprint")
	}
	// A request the plan cannot serve is refused, naming why.
	_, err = ca.Plan(ctx, StreamRequest{Spec: spec, Rank: 5, World: 5})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("rank outside the world: %v", err)
	}
}

func drain(t *testing.T, br *BatchReader) {
	t.Helper()
	defer br.Close()
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		b.Record.Release()
	}
}

// The health service answers SERVING once the socket listens, and turns
// NOT_SERVING when the daemon begins to stop.
func TestHealth(t *testing.T) {
	dir := t.TempDir()
	store, _ := shard.NewLocalStore([]string{dir})
	srv, err := NewServer(Options{Socket: filepath.Join(dir, "h.sock")}, Deps{Store: store, Formats: shard.DefaultFormats()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- srv.Serve(ctx, func() { close(ready) }) }()
	<-ready
	c, _ := Dial(srv.Socket())
	defer c.Close()
	for _, svc := range []string{"", "loaderd.feed.v1.Feed"} {
		if st, err := c.Health(context.Background(), svc); err != nil || st != "SERVING" {
			t.Fatalf("health of %q: %s, %v", svc, st, err)
		}
	}
	if _, err := c.Health(context.Background(), "no.such.Service"); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v", err)
	}
	watchCtx, endWatch := context.WithTimeout(context.Background(), 10*time.Second)
	defer endWatch()
	w, err := c.health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v, %v", m, err)
	}
	stop()
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch while stopping: %v, %v", m, err)
	}
	endWatch() // lets the graceful stop finish at once
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Status shows, per job and epoch, the plan a node serves and its ranks.
func TestStatusGroupsPlans(t *testing.T) {
	r := newSessions()
	for i, s := range []*session{
		{job: "j", epoch: 1, world: 8, plan: "p1", rank: 4},
		{job: "j", epoch: 1, world: 8, plan: "p1", rank: 3},
		{job: "j", epoch: 2, world: 8, plan: "p2", rank: 3},
		{job: "i", epoch: 0, world: 1, plan: "p0", rank: 0},
		{job: "j", epoch: 1, world: 8, plan: "p1", rank: 3}, // a second session of rank 3
	} {
		s.id = fmt.Sprint(i)
		r.add(s)
	}
	got := fmt.Sprint(r.plans())
	want := fmt.Sprint([]*feedv1.PlanStatus{
		{Job: "i", Epoch: 0, WorldSize: 1, PlanFingerprint: "p0", Ranks: []int32{0}},
		{Job: "j", Epoch: 1, WorldSize: 8, PlanFingerprint: "p1", Ranks: []int32{3, 4}},
		{Job: "j", Epoch: 2, WorldSize: 8, PlanFingerprint: "p2", Ranks: []int32{3}},
	})
	if got != want {
		t.Fatalf("plans\n%s\nwant\n%s", got, want)
	}
}
