// Package corpora locates the shared test corpora (../shared/corpora beside the
// repository) for tests in any package. Tests read the files in place; nothing
// from the corpora is copied into the repository.
package corpora

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Dir returns the corpora directory, from $LOADERD_CORPORA or ../shared/corpora
// relative to the repository root. It fails the test when there is none.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("LOADERD_CORPORA"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			c := filepath.Join(filepath.Dir(d), "shared", "corpora")
			if _, err := os.Stat(filepath.Join(c, "MANIFEST.md")); err != nil {
				t.Fatalf("corpora not found at %s (set LOADERD_CORPORA): %v", c, err)
			}
			return c
		}
		if filepath.Dir(d) == d {
			t.Fatal("no go.mod above the working directory")
		}
	}
}

// Path joins elements below the corpora directory.
func Path(t testing.TB, elem ...string) string {
	return filepath.Join(append([]string{Dir(t)}, elem...)...)
}

// Expectations reads a tab-separated EXPECTATIONS.tsv: rows of
// (file, upstream status, result), the header left out.
func Expectations(t testing.TB, elem ...string) [][]string {
	t.Helper()
	f, err := os.Open(Path(t, elem...))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	for first := true; sc.Scan(); first = false {
		if first || strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		rows = append(rows, strings.Split(sc.Text(), "\t"))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}
