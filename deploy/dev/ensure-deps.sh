#!/usr/bin/env bash
# Installs what the build needs and a fresh machine may lack: Go modules, and
# system libraries (apt, as root) as features need them.
set -euo pipefail
cd "$(dirname "$0")/../.."
go mod download

# libjpeg-turbo (headers and -ljpeg): the CPU image decoder's JPEG library.
# Without it the build still works, with Go's image/jpeg (about 4x slower).
if ! bash deploy/dev/gotags.sh --check; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "ensure-deps: installing libjpeg-turbo headers (libjpeg-dev)" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -q libjpeg-dev >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null && apt-get install -y -q libjpeg-dev >/dev/null; } ||
			echo "ensure-deps: apt-get could not install libjpeg-dev" >&2
	fi
	if ! bash deploy/dev/gotags.sh --check; then
		echo "ensure-deps: WARNING: libjpeg-turbo is not usable (need cgo, a C compiler and libjpeg-turbo's" \
			"jpeglib.h: apt-get install libjpeg-dev); building with the nolibjpeg tag: JPEG decoding falls back" \
			"to Go's image/jpeg, about 4x slower" >&2
	fi
fi
