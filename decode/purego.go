//go:build !cgo || nolibjpeg

package decode

// jpegLibrary names the JPEG decoder of this build: Go's image/jpeg, about
// four times slower than libjpeg-turbo, used where loaderd was built without
// cgo or without libjpeg-turbo's headers (make logs which).
const jpegLibrary = "Go image/jpeg: built without libjpeg-turbo, about 4x slower"

// turboRegion is libjpeg-turbo's fast path; this build has none.
func (w *work) turboRegion(Header, []byte, float64, float64, float64, float64, int, int) (pixels, [4]float64, bool, error) {
	return pixels{}, [4]float64{}, false, nil
}

// The resampling kernels of this build: Go's.
var (
	hpass = goHPass
	vpass = goVPass
)
