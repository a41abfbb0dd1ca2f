//go:build !(nvjpeg && cgo)

package decode

// newGPU is nil: this build has no GPU decoder (the nvjpeg build tag, with
// the CUDA toolkit, adds it; see nvjpeg.go).
var newGPU gpuBuilder
