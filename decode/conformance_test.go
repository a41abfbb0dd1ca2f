package decode_test

import (
	"testing"

	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/decode/decodetest"
)

func TestCPUConformance(t *testing.T) {
	decodetest.Run(t, decode.NewCPU(decode.Options{}))
}

// The host half of the GPU decoder over software lanes: what runs around
// nvJPEG and NPP passes the suite without a GPU.
func TestBatchedConformance(t *testing.T) {
	d := decode.NewSoftGPU()
	defer func() { _ = d.Close() }()
	decodetest.Run(t, d)
}
