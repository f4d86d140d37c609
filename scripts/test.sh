#!/usr/bin/env bash
# The whole test suite: set-up first (idempotent), then every tap test against real mounts. A full run (no
# arguments) runs the union suites a second time on the fallback transport (-o transport=fuse-native), so
# both transports are held to the kernel's behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Type-check the tests with the code they import (tap runs them through tsx, which never checks types).
npx --no-install tsc -p tsconfig.test.json
npx --no-install tap "$@"
if [ "$#" -eq 0 ]; then
  STRATA_TEST_TRANSPORT=fuse-native npx --no-install tap test/union/differential.test.ts test/union/clients.test.ts \
    test/union/failures.test.ts test/union/mount-forms.test.ts test/union/cache-coherence.test.ts
fi
