//go:build cgo

package decode

import (
	"strings"
	"testing"
)

func TestDiscoverMissingLibrary(t *testing.T) {
	path := t.TempDir() + "/libnvidia-ml.so.1"
	d := discoverNVML(path)
	if d.Err == nil || !strings.Contains(d.Err.Error(), "no NVIDIA driver") || !strings.Contains(d.Err.Error(), path) {
		t.Fatalf("discovery through a missing library: %+v", d)
	}
}
