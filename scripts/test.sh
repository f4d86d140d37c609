#!/usr/bin/env bash
# The whole test suite: set-up first (idempotent), then every tap test against real mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx --no-install tap "$@"
