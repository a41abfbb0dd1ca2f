// Package objtest starts S3- and GCS-compatible servers in-process (gofakes3
// and fake-gcs-server over httptest) and injects faults into the traffic, for
// tests and benchmarks of object-store reads. Only loopback addresses are
// used.
package objtest

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Server is a running fake object server.
type Server struct {
	URL   string
	close func()
}

// Close stops the server.
func (s *Server) Close() { s.close() }

// StartS3 starts an S3-compatible server holding the named (empty) buckets.
func StartS3(buckets ...string) (*Server, error) {
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			return nil, err
		}
	}
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	return &Server{URL: ts.URL, close: ts.Close}, nil
}

// StartGCS starts a GCS-compatible server holding the named (empty) buckets.
func StartGCS(buckets ...string) (*Server, error) {
	fake, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Writer: io.Discard})
	if err != nil {
		return nil, err
	}
	for _, b := range buckets {
		fake.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: b})
	}
	ts := httptest.NewServer(fake.HTTPHandler())
	return &Server{URL: ts.URL, close: func() { ts.Close(); fake.Stop() }}, nil
}

// Faults is an http.RoundTripper that damages object reads (GET requests
// with a Range header): every FailEvery-th such request gets a 503, every
// CutEvery-th has its body cut after CutAfter bytes with a connection error,
// and every body read is delayed by Delay. Zero fields inject nothing.
type Faults struct {
	Base      http.RoundTripper
	FailEvery int64
	CutEvery  int64
	CutAfter  int64
	Delay     time.Duration

	n             atomic.Int64
	mu            sync.Mutex
	Failed, Cut   int64 // faults injected so far
	Ranged, Bytes int64 // ranged GETs seen, body bytes delivered
}

// Client returns an HTTP client that sends through f.
func (f *Faults) Client() *http.Client { return &http.Client{Transport: f} }

// ErrCut is the error a cut body returns, as a reset connection would.
var ErrCut = errors.New("objtest: connection reset mid-body")

// RoundTrip implements http.RoundTripper.
func (f *Faults) RoundTrip(req *http.Request) (*http.Response, error) {
	base := f.Base
	if base == nil {
		base = http.DefaultTransport
	}
	ranged := req.Method == http.MethodGet && (req.Header.Get("Range") != "" || strings.Contains(req.URL.RawQuery, "alt=media"))
	if !ranged {
		return base.RoundTrip(req)
	}
	n := f.n.Add(1)
	f.mu.Lock()
	f.Ranged++
	f.mu.Unlock()
	if f.FailEvery > 0 && n%f.FailEvery == 0 {
		f.mu.Lock()
		f.Failed++
		f.mu.Unlock()
		return &http.Response{
			StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
			Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("slow down")),
			Request: req, ProtoMajor: 1, ProtoMinor: 1,
		}, nil
	}
	resp, err := base.RoundTrip(req)
	if err != nil || resp.StatusCode >= 300 {
		return resp, err
	}
	limit := int64(-1)
	if f.CutEvery > 0 && n%f.CutEvery == 0 {
		limit = f.CutAfter
		f.mu.Lock()
		f.Cut++
		f.mu.Unlock()
	}
	resp.Body = &faultyBody{ReadCloser: resp.Body, f: f, limit: limit}
	return resp, nil
}

type faultyBody struct {
	io.ReadCloser
	f     *Faults
	limit int64 // bytes left before the cut; -1: no cut
}

func (b *faultyBody) Read(p []byte) (int, error) {
	if b.f.Delay > 0 {
		time.Sleep(b.f.Delay)
	}
	if b.limit == 0 {
		return 0, ErrCut
	}
	if b.limit > 0 && int64(len(p)) > b.limit {
		p = p[:b.limit]
	}
	n, err := b.ReadCloser.Read(p)
	if b.limit > 0 {
		b.limit -= int64(n)
	}
	b.f.mu.Lock()
	b.f.Bytes += int64(n)
	b.f.mu.Unlock()
	return n, err
}
