#!/usr/bin/env bash
# Installs what the build needs and a fresh machine may lack: Go modules now,
# system libraries (apt, as root) as features need them.
set -euo pipefail
go mod download
