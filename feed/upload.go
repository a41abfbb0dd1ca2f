package feed

import (
	"errors"
	"fmt"
	"io"

	feedv1 "github.com/loaderd/loaderd/feed/api/loaderd/feed/v1"
	"github.com/loaderd/loaderd/shard"
)

// Upload receives a table a client made and keeps it in the upload store:
// the header first (digest and size), then the bytes. A table the store
// already holds is answered at once, whatever the client sends after; a
// header alone, for a table not held, gets NOT_FOUND (clients ask first).
func (v *service) Upload(stream feedv1.Feed_UploadServer) error {
	store := v.s.uploads
	if store == nil {
		return fmt.Errorf("%w: this daemon takes no uploads (upload-bytes is 0, as set or for want of "+
			"room beside cache-bytes): give it --upload-bytes, or write the table to a Parquet file under "+
			"a data root and read that", shard.ErrUnsupported)
	}
	first, err := stream.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	h := first.GetHeader()
	if err != nil || h == nil {
		return shard.Invalidf("an upload starts with its header")
	}
	if store.Has(h.GetSha256()) {
		uri := shard.MemURI(h.GetSha256())
		return stream.SendAndClose(&feedv1.UploadResponse{Uri: uri, Size: h.GetSize(), Existed: true})
	}
	// A header alone asks whether the table is here: nothing is reserved.
	req, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s is not held here: send its bytes after the header", shard.ErrNotFound,
			shard.MemURI(h.GetSha256()))
	}
	if err != nil {
		return err
	}
	up, err := store.Begin(h.GetSha256(), h.GetSize())
	if err != nil {
		return err
	}
	defer up.Abort() // after Commit, a no-op
	for {
		chunk := req.GetChunk()
		if chunk == nil {
			return shard.Invalidf("an upload has one header, then chunks")
		}
		if _, err := up.Write(chunk); err != nil {
			return err
		}
		if req, err = stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
	}
	f, err := up.Commit()
	if err != nil {
		return err
	}
	v.s.log.Info("table uploaded", "uri", f.URI, "bytes", f.Size)
	return stream.SendAndClose(&feedv1.UploadResponse{Uri: f.URI, Size: f.Size})
}

// uploadsStatus reports the upload store; nil when there is none.
func uploadsStatus(store *shard.MemStore) *feedv1.UploadsStatus {
	if store == nil {
		return nil
	}
	st := store.Stats()
	return &feedv1.UploadsStatus{BudgetBytes: st.Budget, Bytes: st.Bytes, Tables: int64(st.Tables),
		Uploads: st.Uploads, Evictions: st.Evictions, ReservedBytes: st.Reserved}
}
