// Package objstore serves s3:// and gs:// URIs as a shard.Store, through the
// Go CDK's portable blob API (gocloud.dev/blob) over the official AWS and
// Google Cloud SDKs.
//
// gocloud.dev was chosen over the two SDKs used directly: one small API for
// ranged reads, listing and writes on both clouds (and any S3-compatible
// server), with each SDK's standard credential chain (AWS_* environment,
// shared config, instance roles; GOOGLE_APPLICATION_CREDENTIALS and metadata
// server), kept by the Go Cloud team. The SDKs retry failed requests; this
// package adds what they do not: a read cut mid-body is resumed from the
// byte it stopped at, with backoff, so nothing is lost or duplicated.
//
// Data-root confinement does not apply to object URIs (there is no path to
// escape); what may be read is what the daemon's credentials reach, narrowed
// by an optional allow-list of buckets (serve --allow-bucket).
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/storage"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/bmatcuk/doublestar/v4"
	"github.com/loaderd/loaderd/shard"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/s3blob"
	"gocloud.dev/gcerrors"
	"gocloud.dev/gcp"
	"google.golang.org/api/option"
)

// Options configure the store. Zero values take the defaults of
// EnsureDefaults.
type Options struct {
	// AllowBuckets, when not empty, lists the buckets ("s3://name",
	// "gs://name", or a bare name for either) that may be read; others are
	// refused with shard.ErrPermission.
	AllowBuckets []string
	// S3Endpoint and GCSEndpoint point at S3- or GCS-compatible servers
	// (MinIO, an emulator, a test server) instead of the clouds. The SDKs
	// also honour AWS_ENDPOINT_URL and STORAGE_EMULATOR_HOST.
	S3Endpoint  string
	GCSEndpoint string
	// HTTPClient, when set, carries every request (tests inject faults
	// with it). Credentials are then anonymous unless the environment
	// has AWS keys.
	HTTPClient *http.Client
	// Attempts bounds the tries of one read, Backoff the first pause
	// between them (doubled each time, with jitter, up to MaxBackoff).
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	Logger     *slog.Logger
}

// EnsureDefaults fills zero fields.
func (o *Options) EnsureDefaults() {
	if o.Attempts == 0 {
		o.Attempts = 6
	}
	if o.Backoff == 0 {
		o.Backoff = 50 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store lists and reads objects. Buckets are opened on first use and kept
// until Close.
type Store struct {
	opts Options

	mu      sync.Mutex
	buckets map[string]*blob.Bucket // by "scheme://bucket"
}

// New returns a store; nothing is contacted until a URI is used.
func New(opts Options) *Store {
	opts.EnsureDefaults()
	return &Store{opts: opts, buckets: map[string]*blob.Bucket{}}
}

// Close closes every opened bucket.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, b := range s.buckets {
		errs = append(errs, b.Close())
	}
	clear(s.buckets)
	return errors.Join(errs...)
}

// Schemes are the URI schemes this store serves.
var Schemes = []string{"s3", "gs"}

// ParseURI splits scheme://bucket/key.
func ParseURI(uri string) (scheme, bucket, key string, err error) {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok || !slices.Contains(Schemes, scheme) {
		return "", "", "", shard.Invalidf("%q is not an s3:// or gs:// URI", uri)
	}
	bucket, key, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", "", shard.Invalidf("%q names no bucket", uri)
	}
	return scheme, bucket, key, nil
}

func (s *Store) allowed(scheme, bucket string) bool {
	if len(s.opts.AllowBuckets) == 0 {
		return true
	}
	return slices.Contains(s.opts.AllowBuckets, bucket) || slices.Contains(s.opts.AllowBuckets, scheme+"://"+bucket)
}

// Bucket returns the opened bucket of a URI, checking the allow-list.
func (s *Store) Bucket(ctx context.Context, uri string) (*blob.Bucket, string, error) {
	scheme, name, key, err := ParseURI(uri)
	if err != nil {
		return nil, "", err
	}
	if !s.allowed(scheme, name) {
		return nil, "", fmt.Errorf("%w: bucket %s://%s is not in the allowed buckets %v (see --allow-bucket)",
			shard.ErrPermission, scheme, name, s.opts.AllowBuckets)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := scheme + "://" + name
	if b, ok := s.buckets[id]; ok {
		return b, key, nil
	}
	var b *blob.Bucket
	switch scheme {
	case "s3":
		b, err = s.openS3(ctx, name)
	case "gs":
		b, err = s.openGCS(ctx, name)
	}
	if err != nil {
		return nil, "", fmt.Errorf("opening %s: %w", id, err)
	}
	s.buckets[id] = b
	return b, key, nil
}

func (s *Store) openS3(ctx context.Context, name string) (*blob.Bucket, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if s.opts.S3Endpoint != "" && os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" {
		// A compatible server with no keys given: send unsigned requests
		// rather than search the chain (which ends at the EC2 metadata
		// address).
		cfg.Credentials = aws.AnonymousCredentials{}
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if s.opts.HTTPClient != nil {
			o.HTTPClient = s.opts.HTTPClient
		}
		if s.opts.S3Endpoint != "" {
			o.BaseEndpoint = aws.String(s.opts.S3Endpoint)
			o.UsePathStyle = true // S3-compatible servers rarely do virtual hosts
		}
	})
	return s3blob.OpenBucket(ctx, client, name, nil)
}

func (s *Store) openGCS(ctx context.Context, name string) (*blob.Bucket, error) {
	if s.opts.GCSEndpoint != "" || s.opts.HTTPClient != nil {
		hc := s.opts.HTTPClient
		if hc == nil {
			hc = http.DefaultClient
		}
		opts := &gcsblob.Options{ClientOptions: []option.ClientOption{option.WithHTTPClient(hc), option.WithoutAuthentication()}}
		if s.opts.GCSEndpoint != "" {
			// Emulators serve the JSON API; reads default to the XML one.
			opts.ClientOptions = append(opts.ClientOptions, storage.WithJSONReads(),
				option.WithEndpoint(strings.TrimSuffix(s.opts.GCSEndpoint, "/")+"/storage/v1/"))
		}
		return gcsblob.OpenBucket(ctx, &gcp.HTTPClient{Client: *hc}, name, opts)
	}
	creds, err := gcp.DefaultCredentials(ctx)
	if err != nil {
		return nil, fmt.Errorf("no Google credentials (GOOGLE_APPLICATION_CREDENTIALS or the metadata server): %w", err)
	}
	client, err := gcp.NewHTTPClient(gcp.DefaultTransport(), gcp.CredentialsTokenSource(creds))
	if err != nil {
		return nil, err
	}
	return gcsblob.OpenBucket(ctx, client, name, nil)
}

// classify maps a blob error to shard's classes.
func classify(uri string, err error) error {
	switch gcerrors.Code(err) {
	case gcerrors.NotFound:
		return fmt.Errorf("%w: %s: %w", shard.ErrNotFound, uri, err)
	case gcerrors.PermissionDenied:
		return fmt.Errorf("%w: %s: %w", shard.ErrPermission, uri, err)
	}
	return fmt.Errorf("%s: %w", uri, err)
}

// transient reports whether an error may pass on a retry.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.InvalidArgument,
		gcerrors.FailedPrecondition, gcerrors.Unimplemented, gcerrors.Canceled:
		return false
	}
	return true
}

// Glob implements shard.Store. A URI without pattern characters names an
// object, or else a prefix ("directory") whose objects are all listed; a
// pattern (with **) is matched against the keys listed under its fixed
// prefix. As locally, names starting with "." or "_" are left out of
// listings.
func (s *Store) Glob(ctx context.Context, pattern string) ([]shard.FileInfo, error) {
	b, key, err := s.Bucket(ctx, pattern)
	if err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(pattern, key)
	var out []shard.FileInfo
	add := func(k string, size int64, version string) {
		name := path.Base(k)
		if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || strings.HasSuffix(k, "/") {
			return
		}
		out = append(out, shard.FileInfo{URI: base + k, Size: size, Version: version})
	}
	if !strings.ContainsAny(key, "*?[{") {
		if key != "" && !strings.HasSuffix(key, "/") {
			attrs, err := s.attributes(ctx, b, key)
			if err == nil {
				return []shard.FileInfo{{URI: pattern, Size: attrs.Size, Version: version(attrs.ETag, attrs.ModTime, attrs.Size)}}, nil
			}
			if gcerrors.Code(err) != gcerrors.NotFound {
				return nil, classify(pattern, err)
			}
		}
		prefix := key
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		err = s.list(ctx, b, prefix, func(o *blob.ListObject) { add(o.Key, o.Size, version(etagOf(o), o.ModTime, o.Size)) })
	} else {
		if !doublestar.ValidatePattern(key) {
			return nil, shard.Invalidf("bad pattern %q", pattern)
		}
		prefix, _ := doublestar.SplitPattern(key)
		if prefix == "." {
			prefix = ""
		} else {
			prefix += "/"
		}
		err = s.list(ctx, b, prefix, func(o *blob.ListObject) {
			if ok, _ := doublestar.Match(key, o.Key); ok {
				add(o.Key, o.Size, version(etagOf(o), o.ModTime, o.Size))
			}
		})
	}
	if err != nil {
		return nil, classify(pattern, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s matches no objects", shard.ErrNotFound, pattern)
	}
	slices.SortFunc(out, func(a, b shard.FileInfo) int { return strings.Compare(a.URI, b.URI) })
	return out, nil
}

func etagOf(o *blob.ListObject) string {
	if len(o.MD5) > 0 {
		return fmt.Sprintf("%x", o.MD5)
	}
	return ""
}

func version(etag string, mod time.Time, size int64) string {
	if etag != "" {
		return strings.Trim(etag, `"`)
	}
	return fmt.Sprintf("%d-%d", mod.UnixNano(), size)
}

// list walks every object under prefix, page by page, retrying a failed page.
func (s *Store) list(ctx context.Context, b *blob.Bucket, prefix string, fn func(*blob.ListObject)) error {
	var token = blob.FirstPageToken
	for {
		var page []*blob.ListObject
		err := s.retry(ctx, "list "+prefix, func() error {
			var err error
			page, token, err = b.ListPage(ctx, token, 1000, &blob.ListOptions{Prefix: prefix})
			return err
		})
		if err != nil {
			return err
		}
		for _, o := range page {
			fn(o)
		}
		if len(token) == 0 {
			return nil
		}
	}
}

func (s *Store) attributes(ctx context.Context, b *blob.Bucket, key string) (*blob.Attributes, error) {
	var attrs *blob.Attributes
	err := s.retry(ctx, "stat "+key, func() error {
		var err error
		attrs, err = b.Attributes(ctx, key)
		return err
	})
	return attrs, err
}

// retry runs fn until it succeeds, fails for good, or the attempts run out.
func (s *Store) retry(ctx context.Context, what string, fn func() error) error {
	var err error
	for attempt := range s.opts.Attempts {
		if err = fn(); err == nil || !transient(err) {
			return err
		}
		if err := s.pause(ctx, attempt); err != nil {
			return err
		}
		s.opts.Logger.Debug("retrying", "op", what, "attempt", attempt+1, "err", err)
	}
	return err
}

// pause sleeps the backoff of an attempt: exponential, capped, with jitter
// so that ranks retrying together do not hammer the server in step.
func (s *Store) pause(ctx context.Context, attempt int) error {
	d := min(s.opts.Backoff<<attempt, s.opts.MaxBackoff)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Open implements shard.Store. Nothing is read until ReadAt.
func (s *Store) Open(ctx context.Context, f shard.FileInfo) (shard.File, error) {
	b, key, err := s.Bucket(ctx, f.URI)
	if err != nil {
		return nil, err
	}
	return &object{ctx: ctx, s: s, b: b, key: key, info: f}, nil
}

// object is an open object: every ReadAt is one ranged GET (or several,
// when a body is cut and the rest is fetched again).
type object struct {
	ctx  context.Context
	s    *Store
	b    *blob.Bucket
	key  string
	info shard.FileInfo
}

func (o *object) Size() int64  { return o.info.Size }
func (o *object) Close() error { return nil }

// ReadAt implements io.ReaderAt. A read that fails part-way goes on from the
// first byte not yet received, so a retried read never repeats or skips
// bytes; the attempts count failures without progress.
func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.info.Size {
		return 0, io.EOF
	}
	want := p
	if rest := o.info.Size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	done, failures := 0, 0
	for done < len(want) {
		n, err := o.readOnce(want[done:], off+int64(done))
		done += n
		if err == nil {
			continue
		}
		if !transient(err) {
			return done, classify(o.info.URI, err)
		}
		if n == 0 {
			failures++
		} else {
			failures = 0
		}
		if failures >= o.s.opts.Attempts {
			return done, fmt.Errorf("%s: reading bytes %d..%d after %d attempts: %w", o.info.URI, off+int64(done), off+int64(len(want)), failures, err)
		}
		if err := o.s.pause(o.ctx, failures); err != nil {
			return done, err
		}
		o.s.opts.Logger.Debug("resuming read", "uri", o.info.URI, "offset", off+int64(done), "err", err)
	}
	if len(want) < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// readOnce does one ranged GET into p, returning what arrived.
func (o *object) readOnce(p []byte, off int64) (int, error) {
	r, err := o.b.NewRangeReader(o.ctx, o.key, off, int64(len(p)), nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = r.Close() }() // a read-only body; its error adds nothing
	n, err := io.ReadFull(r, p)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		// The body ended early: a cut connection, or the object shrank.
		err = fmt.Errorf("body ended after %d of %d bytes: %w", n, len(p), io.ErrUnexpectedEOF)
	}
	return n, err
}

var _ shard.Store = (*Store)(nil)
