// Package decode turns encoded images into training tensors: it decodes JPEG,
// PNG, WebP, BMP and TIFF, applies the EXIF orientation, and runs torchvision's
// transforms (random_resized_crop, resize, center_crop, random_horizontal_flip,
// normalize) with the same semantics, writing pixels straight into the batch's
// output buffer.
//
// A Decoder decodes a whole batch in one call, so a GPU implementation can
// batch; the CPU implementation decodes JPEG with libjpeg-turbo through cgo —
// at the smallest DCT scale that still covers the output, and only the rows
// and iMCU columns of the crop — and falls back to Go's image/jpeg when built
// without cgo or with the nolibjpeg tag. Every implementation passes the
// conformance suite in decode/decodetest.
//
// Randomness is a pure function of (seed, epoch, sample id): a rerun gives the
// same pixels on any machine. The package knows nothing of where the bytes
// came from; callers name the file in errors.
package decode
