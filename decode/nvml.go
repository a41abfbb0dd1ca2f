//go:build cgo

package decode

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlLibrary is the driver's management library. go-nvml opens it with
// dlopen at Init, so building and linking loaderd needs neither CUDA nor a
// driver; on a machine without one, Init returns ERROR_LIBRARY_NOT_FOUND.
const nvmlLibrary = "libnvidia-ml.so.1"

// DiscoverGPUs asks the NVIDIA driver, through NVML, for its GPUs: count,
// model, memory, driver version. It never fails: the Discovery says why
// there are no GPUs.
func DiscoverGPUs() Discovery { return discoverNVML(nvmlLibrary) }

// discoverNVML discovers through the NVML library at path.
func discoverNVML(path string) Discovery {
	lib := nvml.New(nvml.WithLibraryPath(path))
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return Discovery{Err: fmt.Errorf("no NVIDIA driver: %s cannot be loaded", path)}
		}
		return Discovery{Err: fmt.Errorf("the NVIDIA driver did not start (NVML init: %s)", nvml.ErrorString(ret))}
	}
	defer func() { _ = lib.Shutdown() }() // nothing to do if it fails
	var d Discovery
	var errs []error
	check := func(what string, ret nvml.Return) bool {
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("NVML %s: %s", what, nvml.ErrorString(ret)))
			return false
		}
		return true
	}
	var ret nvml.Return
	d.Driver, ret = lib.SystemGetDriverVersion()
	check("driver version", ret)
	d.CUDADriver, ret = lib.SystemGetCudaDriverVersion()
	check("CUDA driver version", ret)
	n, ret := lib.DeviceGetCount()
	if !check("device count", ret) {
		d.Err = errors.Join(errs...)
		return d
	}
	for i := range n {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if !check(fmt.Sprintf("GPU %d", i), ret) {
			continue // a GPU that has fallen off the bus; the others serve
		}
		g := GPU{Index: i}
		g.Name, _ = dev.GetName()
		g.UUID, _ = dev.GetUUID()
		if m, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
			g.MemoryBytes = m.Total
		}
		g.Major, g.Minor, _ = dev.GetCudaComputeCapability()
		d.GPUs = append(d.GPUs, g)
	}
	if len(d.GPUs) == 0 && len(errs) > 0 {
		d.Err = fmt.Errorf("the NVIDIA driver lists %d GPU(s) but none answers: %w", n, errors.Join(errs...))
	}
	return d
}
