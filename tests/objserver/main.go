// Command objserver serves a directory as an S3 bucket from an in-process
// S3-compatible server (gofakes3) on a loopback port, for end-to-end tests
// and benchmarks of object-store reads. It prints the endpoint URL on one
// line once every file is uploaded, and serves until stdin closes or it is
// signalled.
//
//	objserver --dir DATA --bucket bkt   # s3://bkt/DATA/...; prints http://127.0.0.1:PORT
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/loaderd/loaderd/shard/objstore"
	"github.com/loaderd/loaderd/shard/objstore/objtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "objserver:", err)
		os.Exit(1)
	}
}

func run() error {
	var dirs []string
	flag.Func("dir", "directory whose files become objects, keyed NAME/REL (NAME: the directory's base name); repeatable", func(v string) error {
		dirs = append(dirs, v)
		return nil
	})
	bucket := flag.String("bucket", "bkt", "bucket name")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := objtest.StartS3(*bucket)
	if err != nil {
		return err
	}
	defer srv.Close()
	if len(dirs) > 0 {
		store := objstore.New(objstore.Options{S3Endpoint: srv.URL})
		defer func() { _ = store.Close() }()
		b, _, err := store.Bucket(ctx, "s3://"+*bucket+"/")
		if err != nil {
			return err
		}
		for _, dir := range dirs {
			err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(dir, p)
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				return b.WriteAll(ctx, filepath.Base(dir)+"/"+filepath.ToSlash(rel), data, nil)
			})
			if err != nil {
				return err
			}
		}
	}
	fmt.Println(srv.URL)
	go func() { // stdin closing (the parent went away) ends the server
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	<-ctx.Done()
	return nil
}
