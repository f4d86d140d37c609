#!/usr/bin/env bash
# Registry pull: `strata image pull` of a 5-layer image from a loopback docker-registry against
# `skopeo copy docker://… oci:…` of the same image in the same run.
# Usage: scripts/bench/registry-pull.sh [TOTAL_MIB] [RUNS]   (default: 600 MiB, 3 runs; needs docker-registry,
# skopeo, hyperfine, a build). The layers are files from /usr split into 5 groups of about TOTAL_MIB/5 each,
# gzip-compressed. Prints hyperfine's table and the ratio strata / skopeo (wall-clock and CPU).
# Both do the same work: fetch each blob, verify its digest, write it and fsync it. strata stores pulled layers
# packed and extracts them on first use (or in stratad's background), so the extraction is not in this figure;
# stratad logs each extraction's time ("extracted packed layer", ms). Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
total_mib=${1:-600}
runs=${2:-3}
work=$(mktemp -d /tmp/strata-bench-registry-XXXXXX)
registry_pid=
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();})')
cat > "$work/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/config.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

# Five layers from /usr, about total/5 MiB each, as an OCI layout that skopeo pushes to the registry.
node - "$work" "$total_mib" <<'EOF'
const { execFileSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const [work, totalMib] = [process.argv[2], Number(process.argv[3])];
const per = (totalMib * 1048576) / 5;
const files = execFileSync('find', ['/usr', '-xdev', '-type', 'f', '-size', '-64M', '-readable'], { maxBuffer: 1 << 28 }).toString().split('\n').filter(Boolean).sort();
const groups = [[]];
let size = 0;
for (const f of files) {
  if (groups.length > 5) break;
  let st; try { st = fs.statSync(f); } catch { continue; }
  groups.at(-1).push(f.slice(1));
  size += st.size;
  if (size >= per) { groups.push([]); size = 0; }
}
const layout = path.join(work, 'layout');
fs.mkdirSync(path.join(layout, 'blobs/sha256'), { recursive: true });
const blob = (buf, mediaType) => {
  const hex = crypto.createHash('sha256').update(buf).digest('hex');
  fs.writeFileSync(path.join(layout, 'blobs/sha256', hex), buf);
  return { mediaType, digest: `sha256:${hex}`, size: buf.length };
};
const layers = [];
const diffIds = [];
for (const [i, group] of groups.slice(0, 5).entries()) {
  const list = path.join(work, `list-${i}`);
  fs.writeFileSync(list, group.join('\n') + '\n');
  const tar = execFileSync('tar', ['--create', '--format=posix', '--numeric-owner', '-C', '/', '-T', list, '-f', '-'], { maxBuffer: 2 ** 31 });
  diffIds.push(`sha256:${crypto.createHash('sha256').update(tar).digest('hex')}`);
  layers.push(blob(execFileSync('gzip', ['-1', '-c'], { input: tar, maxBuffer: 2 ** 31 }), 'application/vnd.oci.image.layer.v1.tar+gzip'));
}
const config = blob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } })), 'application/vnd.oci.image.config.v1+json');
const manifest = blob(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers })), 'application/vnd.oci.image.manifest.v1+json');
fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'x' } }] }));
const mib = (n) => (n / 1048576).toFixed(0);
console.log(`image: 5 layers from /usr, ${layers.map((l) => mib(l.size)).join(' + ')} MiB compressed, ${mib(layers.reduce((n, l) => n + l.size, 0))} MiB in all`);
EOF
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:x" "docker://127.0.0.1:$port/bench:1"
rm -rf "$work/layout"

strata="node $(pwd)/dist/lib/cli/strata.js"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine --runs "$runs" --export-json "$work/result.json" \
  --prepare "rm -rf $work/sk $work/root" \
  -n 'skopeo copy' "skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:$port/bench:1 oci:$work/sk:x" \
  -n 'strata image pull' "$strata --root $work/root image pull 127.0.0.1:$port/bench:1"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).results;
  const get = (name) => r.find((x) => x.command === name);
  for (const x of r) console.log(`${x.command.padEnd(18)} wall ${x.mean.toFixed(2)} s (median ${x.median.toFixed(2)})  cpu ${(x.user + x.system).toFixed(2)} s`);
  const s = get("strata image pull"), k = get("skopeo copy");
  console.log(`ratio strata / skopeo  wall ${(s.mean / k.mean).toFixed(2)}  cpu ${((s.user + s.system) / (k.user + k.system)).toFixed(2)}`);
' "$work/result.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
