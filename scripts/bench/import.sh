#!/usr/bin/env bash
# Layer import throughput: `strata layer import` of one uncompressed layer tar against GNU `tar -x` of the same tar
# (and `tar -x` followed by `sync -f`, since strata makes the extracted layer durable before committing it).
# Usage: scripts/bench/import.sh [SOURCE_DIR] [RUNS]   (default: /usr/share, 3 runs; needs hyperfine, a build)
# Prints hyperfine's table and the ratios strata / tar -x (mean wall-clock, and CPU time, which is steadier on a
# shared machine); leaves nothing behind. Includes strata's node start-up and LevelDB open (about 0.3 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:-/usr/share}
runs=${2:-3}
work=$(mktemp -d /tmp/strata-bench-import-XXXXXX)
trap 'rm -rf "$work"' EXIT
tar --create --format=posix --xattrs --xattrs-include='*' --numeric-owner --file="$work/layer.tar" -C "$src" . 2>/dev/null || true
bytes=$(stat -c %s "$work/layer.tar")
files=$(tar -tf "$work/layer.tar" | wc -l)
echo "layer: $src as an uncompressed tar, $((bytes / 1048576)) MiB, $files entries"
strata="node $(pwd)/dist/lib/cli/strata.js"
hyperfine --runs "$runs" --export-json "$work/result.json" \
  --prepare "rm -rf $work/x && mkdir $work/x" \
  -n 'tar -x' "tar --xattrs --xattrs-include='*' --same-owner -xpf $work/layer.tar -C $work/x" \
  -n 'tar -x + sync -f' "tar --xattrs --xattrs-include='*' --same-owner -xpf $work/layer.tar -C $work/x && sync -f $work/x" \
  -n 'strata layer import' "rm -rf $work/root && $strata --root $work/root layer import $work/layer.tar"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).results;
  const mean = (name) => r.find((x) => x.command === name).mean;
  const mib = Number(process.argv[2]) / 1048576;
  const cpu = (name) => { const x = r.find((y) => y.command === name); return x.user + x.system; };
  for (const x of r) console.log(`${x.command.padEnd(22)} wall ${x.mean.toFixed(2)} s (median ${x.median.toFixed(2)})  ${(mib / x.mean).toFixed(0)} MiB/s  cpu ${(x.user + x.system).toFixed(2)} s`);
  console.log(`ratio strata / tar -x         wall ${(mean("strata layer import") / mean("tar -x")).toFixed(2)}  cpu ${(cpu("strata layer import") / cpu("tar -x")).toFixed(2)}`);
  console.log(`ratio strata / tar -x + sync  wall ${(mean("strata layer import") / mean("tar -x + sync -f")).toFixed(2)}`);
' "$work/result.json" "$bytes"
