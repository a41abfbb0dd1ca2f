package feed

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the server's state at scrape time: sessions, the cache,
// memory and look-ahead. Register it with Server.Collector.
type collector struct {
	s *Server

	sessions, batches, rows, bytes                          *prometheus.Desc
	sessBatches, sessRows, sessBytes, sessStall, sessQueue  *prometheus.Desc
	cacheHits, cacheMisses, cacheEvictions, cacheRejections *prometheus.Desc
	cacheLoads, cacheLoadSeconds, cacheBytes, cacheBudget   *prometheus.Desc
	memBudget, memInUse, memIdle, memCharged, memReserved   *prometheus.Desc
	memWait, memFresh, memReused, memDataLimit              *prometheus.Desc
	laWaiting, laPrepared, laClaimed, laExpired, laRefused  *prometheus.Desc
	upBytes, upBudget, upTables, upUploads, upEvictions     *prometheus.Desc
}

// Collector returns a Prometheus collector of the server's sessions, cache,
// memory and look-ahead, for a registry the caller owns.
func (s *Server) Collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("loaderd_"+name, help, labels, nil)
	}
	sl := []string{"session", "job", "rank", "epoch"}
	return &collector{
		s:                s,
		sessions:         d("sessions", "Open sessions."),
		batches:          d("batches_served_total", "Batches sent, all sessions together."),
		rows:             d("rows_served_total", "Rows sent, all sessions together."),
		bytes:            d("bytes_served_total", "Arrow IPC bytes sent, all sessions together."),
		sessBatches:      d("session_batches_served_total", "Batches sent to the session.", sl...),
		sessRows:         d("session_rows_served_total", "Rows sent to the session.", sl...),
		sessBytes:        d("session_bytes_served_total", "Arrow IPC bytes sent to the session.", sl...),
		sessStall:        d("session_stall_seconds_total", "Time the session waited on an empty queue of ready batches.", sl...),
		sessQueue:        d("session_queue_depth", "Ready batches waiting in the session's queue.", sl...),
		cacheHits:        d("cache_hits_total", "Block cache hits."),
		cacheMisses:      d("cache_misses_total", "Block cache misses."),
		cacheEvictions:   d("cache_evictions_total", "Cache entries pushed out for room."),
		cacheRejections:  d("cache_rejections_total", "Cache entries kept out by the admission policy or their size."),
		cacheLoads:       d("cache_loads_total", "Values loaded on cache misses (reads and decodes)."),
		cacheLoadSeconds: d("cache_load_seconds_total", "Time spent loading on cache misses: reading and decoding blocks."),
		cacheBytes:       d("cache_bytes", "Bytes the cache holds."),
		cacheBudget:      d("cache_budget_bytes", "The cache's budget (--cache-bytes)."),
		memBudget:        d("memory_budget_bytes", "The daemon's memory budget (--memory-bytes)."),
		memDataLimit:     d("memory_data_limit_bytes", "What counted bytes may take: the budget less the Go runtime's share."),
		memInUse:         d("memory_in_use_bytes", "Arrow buffers in use: queued batches, blocks in flight, the cache's decoded blocks."),
		memIdle:          d("memory_idle_bytes", "Freed buffers kept for reuse."),
		memCharged:       d("memory_charged_bytes", "Bytes held outside Arrow's allocator: encode buffers, raw cached ranges."),
		memReserved:      d("memory_reserved_bytes", "Bytes reserved for reads under way."),
		memWait:          d("memory_wait_seconds_total", "Time reads waited for room in the memory budget."),
		memFresh:         d("memory_fresh_bytes_total", "Bytes allocated from the Go heap for Arrow buffers."),
		memReused:        d("memory_reused_bytes_total", "Bytes of Arrow buffers served from freed ones."),
		laWaiting:        d("lookahead_waiting", "Next epochs prepared and not yet claimed."),
		laPrepared:       d("lookahead_prepared_total", "Next epochs prepared ahead of their sessions."),
		laClaimed:        d("lookahead_claimed_total", "Prepared epochs handed to their sessions."),
		laExpired:        d("lookahead_expired_total", "Prepared epochs closed unclaimed."),
		laRefused:        d("lookahead_refused_total", "Next epochs not prepared because too many were waiting."),
		upBytes:          d("upload_bytes", "Bytes of the tables clients uploaded that the daemon holds."),
		upBudget:         d("upload_budget_bytes", "Room for uploaded tables (--upload-bytes)."),
		upTables:         d("upload_tables", "Uploaded tables held."),
		upUploads:        d("uploads_total", "Tables uploaded."),
		upEvictions:      d("upload_evictions_total", "Uploaded tables dropped to make room for newer ones."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.sessions, c.batches, c.rows, c.bytes,
		c.sessBatches, c.sessRows, c.sessBytes, c.sessStall, c.sessQueue,
		c.cacheHits, c.cacheMisses, c.cacheEvictions, c.cacheRejections,
		c.cacheLoads, c.cacheLoadSeconds, c.cacheBytes, c.cacheBudget,
		c.memBudget, c.memDataLimit, c.memInUse, c.memIdle, c.memCharged, c.memReserved,
		c.memWait, c.memFresh, c.memReused,
		c.laWaiting, c.laPrepared, c.laClaimed, c.laExpired, c.laRefused,
		c.upBytes, c.upBudget, c.upTables, c.upUploads, c.upEvictions,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	s := c.s
	open := s.sessions.snapshot()
	gauge(c.sessions, float64(len(open)))
	counter(c.batches, float64(s.served.batches.Load()))
	counter(c.rows, float64(s.served.rows.Load()))
	counter(c.bytes, float64(s.served.bytes.Load()))
	for _, x := range open {
		l := []string{x.id, x.job, strconv.Itoa(int(x.rank)), strconv.FormatInt(x.epoch, 10)}
		counter(c.sessBatches, float64(x.batches.Load()), l...)
		counter(c.sessRows, float64(x.rows.Load()), l...)
		counter(c.sessBytes, float64(x.bytes.Load()), l...)
		counter(c.sessStall, x.stream.Stall().Seconds(), l...)
		gauge(c.sessQueue, float64(x.stream.QueueDepth()), l...)
	}
	if ca := s.cache; ca != nil {
		st := ca.Stats()
		counter(c.cacheHits, float64(st.Hits.Load()))
		counter(c.cacheMisses, float64(st.Misses.Load()))
		counter(c.cacheEvictions, float64(st.Evictions.Load()))
		counter(c.cacheRejections, float64(st.Rejections.Load()))
		counter(c.cacheLoads, float64(st.Loads.Load()))
		counter(c.cacheLoadSeconds, time.Duration(st.LoadNanos.Load()).Seconds())
		gauge(c.cacheBytes, float64(st.Bytes.Load()))
		gauge(c.cacheBudget, float64(ca.Budget()))
	}
	if m := s.memory; m != nil {
		st := m.Stats()
		gauge(c.memBudget, float64(st.Budget))
		gauge(c.memDataLimit, float64(st.Limit))
		gauge(c.memInUse, float64(st.InUse))
		gauge(c.memIdle, float64(st.Idle))
		gauge(c.memCharged, float64(st.Charged))
		gauge(c.memReserved, float64(st.Reserved))
		counter(c.memWait, st.Waited.Seconds())
		counter(c.memFresh, float64(st.Fresh))
		counter(c.memReused, float64(st.Reused))
	}
	la := s.sched.Stats()
	gauge(c.laWaiting, float64(la.Waiting))
	counter(c.laPrepared, float64(la.Prepared))
	counter(c.laClaimed, float64(la.Claimed))
	counter(c.laExpired, float64(la.Expired))
	counter(c.laRefused, float64(la.Refused))
	if u := s.uploads; u != nil {
		st := u.Stats()
		gauge(c.upBytes, float64(st.Bytes))
		gauge(c.upBudget, float64(st.Budget))
		gauge(c.upTables, float64(st.Tables))
		counter(c.upUploads, float64(st.Uploads))
		counter(c.upEvictions, float64(st.Evictions))
	}
}
