package prefetch

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pipeline's own measurements, observed as they happen. A
// nil *Metrics observes nothing. What can be read off state at scrape time
// (queues, memory, the cache) is collected by the server instead.
type Metrics struct {
	// BlockSeconds is the time to obtain one decoded block: a cache hit, or a
	// read and decode.
	BlockSeconds prometheus.Histogram
	// BatchWait is how long a session waited for its next batch; zero when
	// one was ready.
	BatchWait prometheus.Histogram
	// StallSeconds is the total of BatchWait, all sessions together.
	StallSeconds prometheus.Counter
	// ReadSeconds and ReadBytes count reads from storage (file ReadAt calls).
	ReadSeconds prometheus.Counter
	ReadBytes   prometheus.Counter
}

// NewMetrics makes the pipeline's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		BlockSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "loaderd_block_seconds",
			Help:    "Time to obtain one decoded block: a cache hit, or a read and decode.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10), // 50µs .. 13s
		}),
		BatchWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "loaderd_batch_wait_seconds",
			Help:    "Time a session waited for its next batch (0 when one was ready).",
			Buckets: append([]float64{0}, prometheus.ExponentialBuckets(100e-6, 4, 9)...), // 0, 100µs .. 6.5s
		}),
		StallSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loaderd_stall_seconds_total",
			Help: "Time sessions waited on an empty queue of ready batches, all sessions together.",
		}),
		ReadSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loaderd_read_seconds_total",
			Help: "Time spent reading input files (storage I/O, decoding excluded).",
		}),
		ReadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loaderd_read_bytes_total",
			Help: "Bytes read from input files.",
		}),
	}
	reg.MustRegister(m.BlockSeconds, m.BatchWait, m.StallSeconds, m.ReadSeconds, m.ReadBytes)
	return m
}

func (m *Metrics) observeBlock(d time.Duration) {
	if m != nil {
		m.BlockSeconds.Observe(d.Seconds())
	}
}

func (m *Metrics) observeWait(d time.Duration) {
	if m != nil {
		m.BatchWait.Observe(d.Seconds())
		if d > 0 {
			m.StallSeconds.Add(d.Seconds())
		}
	}
}

// ObserveRead records one read from storage; it suits shard.ObserveReads.
func (m *Metrics) ObserveRead(n int, d time.Duration) {
	if m != nil {
		m.ReadSeconds.Add(d.Seconds())
		m.ReadBytes.Add(float64(n))
	}
}
