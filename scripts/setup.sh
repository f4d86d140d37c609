#!/usr/bin/env bash
# One-shot set-up for a fresh Debian machine: system packages, npm dependencies, the native addon,
# the fuse-native patch, the TypeScript build and the mount helper links. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

# System packages: libfuse2 for fuse-native, fuse3 for fusermount/mount.fuse3, libcurl (GnuTLS flavour, headers) for
# the strata_fetch addon, the rest for tests and benchmarks.
want=(libfuse2 fuse3 attr kmod fuse-overlayfs busybox-static vim-nox git tar gzip zstd umoci skopeo docker-registry apache2-utils hyperfine fio psmisc libcap2-bin strace acl
      build-essential python3 patch debootstrap isal libcurl4-gnutls-dev)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm dependencies. Install scripts are run explicitly below, so npm's script policy does not matter here.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# tap builds its Test class from the plugins named in package.json ("tap.plugin": without the ts-node plugin,
# which TypeScript 7 breaks; tests load through tsx). A fresh install still has the default build: rebuild it.
npx --no-install tap build >/dev/null

# Native code: our three addons, and fuse-native rebuilt from source with our patch (see docs/native.md).
node scripts/patch-fuse-native.mjs
# --nodedir: the headers of the node that runs us, so node-gyp never tries to download them.
# Rebuilt when an addon is missing or older than any native source.
stale=0
for built in native/build/Release/strata_sys.node native/build/Release/strata_fuse.node native/build/Release/strata_fetch.node; do
  if [ ! -f "$built" ]; then stale=1; continue; fi
  for src in native/*.c native/*.h native/binding.gyp; do
    if [ "$src" -nt "$built" ]; then stale=1; fi
  done
done
if [ "$stale" = 1 ]; then
  npx --no-install node-gyp rebuild --directory native --loglevel=error --nodedir="$(dirname "$(dirname "$(command -v node)")")" >/dev/null
fi

npm run --silent build

# Wrappers that run this checkout's dist/ with this machine's node (absolute paths, so they work with any PATH),
# each written to a temp name and renamed into place so a concurrent caller never runs a half-written one.
node=$(command -v node)
write_wrapper() { # dir, name, script under the repo
  local tmp="$1/.$2.new"
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$node" "$repo/$3" > "$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$1/$2"
}
# The CLI and the daemon on PATH, as the README runs them (`strata ...`, `stratad`).
mkdir -p /usr/local/bin
write_wrapper /usr/local/bin strata dist/lib/cli/strata.js
write_wrapper /usr/local/bin stratad dist/daemon/stratad.js
# The mount helper, where mount(8) and mount.fuse3 find it (mount.fuse3 runs helpers with a fixed PATH).
for dir in /usr/local/sbin /sbin; do
  if [ -d "$dir" ] && [ -w "$dir" ]; then
    write_wrapper "$dir" strata-overlay dist/lib/cli/strata-overlay.js
  fi
done
modprobe fuse 2>/dev/null || true
