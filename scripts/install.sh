#!/usr/bin/env bash
# Installs stratad as a systemd service from this checkout (run `npm run setup` or `npm run build` first):
#   /usr/local/bin/stratad, /usr/local/bin/strata     wrappers that run dist/ with this machine's node
#   /etc/systemd/system/stratad.{service,socket}      the units from daemon/systemd/
#   /etc/strata/                                      for the optional stratad.json config file
#   /var/lib/strata (0700), /run/strata (0755)        state dir and socket dir
#   group "strata"                                    members may use the control socket
# DESTDIR=/some/dir stages the same tree under that dir (used by tests and packagers); it then skips the group
# and systemctl. Safe to run again.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${DESTDIR:-}
node=$(command -v node || true)
[ -n "$node" ] || { echo "install: node not found in PATH" >&2; exit 1; }
[ -f "$repo/dist/daemon/stratad.js" ] || { echo "install: $repo/dist/daemon/stratad.js missing: run npm run build first" >&2; exit 1; }

install -d -m 0755 "$dest/usr/local/bin" "$dest/etc/systemd/system" "$dest/etc/strata" "$dest/usr/local/share/doc/strata"
install -d -m 0700 "$dest/var/lib/strata"
install -d -m 0755 "$dest/run/strata"

write_wrapper() { # name, script
  local tmp="$dest/usr/local/bin/.$1.new"
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$node" "$repo/$2" > "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$dest/usr/local/bin/$1"
}
write_wrapper stratad dist/daemon/stratad.js
write_wrapper strata dist/lib/cli/strata.js

for unit in stratad.service stratad.socket; do
  install -m 0644 "$repo/daemon/systemd/$unit" "$dest/etc/systemd/system/$unit"
done
for doc in api.md operations.md; do
  if [ -f "$repo/docs/$doc" ]; then install -m 0644 "$repo/docs/$doc" "$dest/usr/local/share/doc/strata/$doc"; fi
done

if [ -z "$dest" ]; then
  getent group strata >/dev/null || groupadd --system strata
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "install: done; start with: systemctl enable --now stratad.socket stratad.service" >&2
  else
    echo "install: done (systemd is not running here; start stratad by hand: /usr/local/bin/stratad)" >&2
  fi
fi
