package feed

import (
	"sync"
	"sync/atomic"
	"time"

	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
)

// session is one open stream: one rank of one job reading one epoch.
type session struct {
	id      string
	job     string
	rank    int32
	world   int32
	epoch   int64
	started time.Time

	batches, rows, bytes atomic.Int64
	queueDepth           func() int
}

// sessions is the registry behind Status.
type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	seq  atomic.Uint64
}

func newSessions() *sessions { return &sessions{byID: map[string]*session{}} }

func (r *sessions) add(s *session) {
	r.mu.Lock()
	r.byID[s.id] = s
	r.mu.Unlock()
}

func (r *sessions) remove(id string) {
	r.mu.Lock()
	delete(r.byID, id)
	r.mu.Unlock()
}

func (r *sessions) status(now time.Time) []*feedv1.SessionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*feedv1.SessionStatus, 0, len(r.byID))
	for _, s := range r.byID {
		st := &feedv1.SessionStatus{
			SessionId: s.id, Job: s.job, Rank: s.rank, WorldSize: s.world, Epoch: s.epoch,
			BatchesSent: s.batches.Load(), RowsSent: s.rows.Load(), BytesSent: s.bytes.Load(),
		}
		if secs := now.Sub(s.started).Seconds(); secs > 0 {
			st.BatchesPerSecond = float64(st.BatchesSent) / secs
		}
		if s.queueDepth != nil {
			st.QueueDepth = int32(s.queueDepth())
		}
		out = append(out, st)
	}
	return out
}
