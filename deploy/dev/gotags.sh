#!/usr/bin/env bash
# Prints the Go build tags for this machine: "nolibjpeg" when cgo cannot
# build against libjpeg-turbo (no C compiler, no jpeglib.h, or a libjpeg that
# is not libjpeg-turbo), so that the image decoder falls back to Go's
# image/jpeg; nothing when it can. With --check it prints nothing and exits 1
# when libjpeg-turbo is unusable.
set -euo pipefail
probe() {
	[ "$(go env CGO_ENABLED)" = 1 ] || return 1
	local dir
	dir=$(mktemp -d)
	trap 'rm -rf "$dir"' RETURN
	cat >"$dir/p.c" <<'C'
#include <stdio.h>
#include <jpeglib.h>
#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#error not libjpeg-turbo
#endif
int main(void) { return jpeg_crop_scanline == 0; }
C
	$(go env CC) "$dir/p.c" -o "$dir/p" -ljpeg >/dev/null 2>&1
}
if [ "${1:-}" = --check ]; then
	probe
elif ! probe; then
	echo nolibjpeg
fi
