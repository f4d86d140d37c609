#!/usr/bin/env bash
# Set up, then start the main program on its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f dist/daemon/stratad.js ]; then
  exec node dist/daemon/stratad.js "$@"
fi
exec bash scripts/demo-mount.sh "$@"
