#!/usr/bin/env bash
# The whole test suite: set-up first (idempotent), then every tap test against real mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Type-check the tests with the code they import (tap runs them through tsx, which never checks types).
npx --no-install tsc -p tsconfig.test.json
exec npx --no-install tap "$@"
