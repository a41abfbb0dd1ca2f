package decode_test

import (
	"testing"

	"github.com/loaderd/loaderd/decode"
	"github.com/loaderd/loaderd/decode/decodetest"
)

func TestCPUConformance(t *testing.T) {
	decodetest.Run(t, decode.NewCPU(decode.Options{}))
}
