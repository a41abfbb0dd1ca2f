//go:build !cgo

package decode

import "errors"

// DiscoverGPUs: NVML needs cgo (go-nvml calls the driver's C library), and
// this build has none.
func DiscoverGPUs() Discovery {
	return Discovery{Err: errors.New("loaderd was built without cgo, so it cannot ask the NVIDIA driver for GPUs")}
}
