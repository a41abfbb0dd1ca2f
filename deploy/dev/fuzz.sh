#!/usr/bin/env bash
# Fuzzes each target briefly: deploy/dev/fuzz.sh FUZZTIME TAGS PKG:TARGET...
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime runs out while a worker is mid-call on a loaded
# machine (golang/go#75804, fixed in Go 1.27): no input is found and none is
# written. Such a run is repeated once; any other failure, a written failing
# input, or a second deadline failure fails at once.
set -uo pipefail
fuzztime=$1 tags=$2
shift 2
run() { # pkg target
	go test -tags "$tags" -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" -fuzzminimizetime 0 "./$1/" 2>&1
}
for t in "$@"; do
	pkg=${t%%:*} target=${t#*:}
	if out=$(run "$pkg" "$target"); then
		printf '%s\n' "$out"
		continue
	fi
	printf '%s\n' "$out"
	if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
		echo "fuzz.sh: $target hit the fuzz coordinator's deadline race (golang/go#75804), no failing input: once more"
		run "$pkg" "$target" || exit 1
		continue
	fi
	exit 1
done
