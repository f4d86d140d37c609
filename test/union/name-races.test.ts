/**
 * Concurrent changes of the same few names (the benchmark's metadata-stress failure: an open(O_CREAT) of a lower
 * name that other processes unlink and re-create got ENXIO, the 0/0 whiteout device). Several real processes
 * (test/helpers/name-race-worker.mjs) hammer three names of one directory, two of them lower files and one a lower
 * directory, with opens for writing, creates, unlinks, renames, links, truncates, chowns, mkdir and rmdir. On the
 * old union an open resolved a name to its upper file, yielded, and an unlink of that name put a whiteout there
 * before the open reached the real path; with several processes that happened dozens of times per run.
 *
 * Kernel overlayfs (redirect_dir=on,index=on) runs first: it validates the expectations (every errno a racing
 * process can get; the tree consistent afterwards). The candidate (STRATA_TEST_CANDIDATE, on the transport of
 * STRATA_TEST_TRANSPORT) must then show the same: no other errno, and afterwards a tree in which every listed name
 * can be stat'ed and read, unlisted names are absent, names sharing an inode have it as their link count, and
 * that the kernel shows the same when it mounts the layers the candidate left behind.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { candidateKind, requireCandidate, Sandbox, type OverlayKind } from '../helpers/sandbox.js';

const candidate = candidateKind();
requireCandidate();

const WORKER = fileURLToPath(new URL('../helpers/name-race-worker.mjs', import.meta.url));
const PROCESSES = 4;
const OPS = 2500;
const NAMES = 3;

interface WorkerReport {
  ops: number;
  ok: number;
  errors: Record<string, number>;
  unexpected: string[];
}

function runWorker(dir: string, seed: number): Promise<WorkerReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER, dir, String(seed), String(OPS), String(NAMES)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) return reject(new Error(`name-race worker ${seed} exited ${code ?? signal}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out) as WorkerReport);
      } catch {
        reject(new Error(`name-race worker ${seed} printed no report: ${out.trim()} ${err.trim()}`));
      }
    });
  });
}

/**
 * What the merged directory shows, checked for consistency on the way: one line per name (type, size and content
 * hash of files, which listed names share an inode). Throws naming the first inconsistency.
 */
function snapshot(dir: string): string[] {
  const listed = fs.readdirSync(dir).sort();
  for (let i = 0; i < NAMES; i++) {
    const name = `f${i}`;
    if (listed.includes(name)) continue;
    let code = 'exists';
    try {
      fs.lstatSync(path.join(dir, name));
    } catch (err) {
      code = (err as NodeJS.ErrnoException).code ?? 'UNKNOWN';
    }
    if (code !== 'ENOENT') throw new Error(`${name} is not listed but lstat says ${code}`);
  }
  const byIno = new Map<number, string[]>();
  const nlinks = new Map<number, number>();
  const lines: string[] = [];
  for (const name of listed) {
    const p = path.join(dir, name);
    const st = fs.lstatSync(p);
    if (st.isDirectory()) {
      const inside = fs.readdirSync(p);
      if (inside.length) throw new Error(`${name}/ holds ${inside.join(', ')}; nothing ever creates anything there`);
      lines.push(`${name} dir`);
    } else if (st.isFile()) {
      const data = fs.readFileSync(p);
      if (data.length !== st.size) throw new Error(`${name}: read ${data.length} bytes, stat says ${st.size}`);
      byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), name]);
      nlinks.set(st.ino, st.nlink);
      lines.push(`${name} file ${st.size} ${createHash('sha256').update(data).digest('hex').slice(0, 16)}`);
    } else {
      throw new Error(`${name} is neither a file nor a directory (mode ${st.mode.toString(8)})`);
    }
  }
  for (const [ino, names] of byIno) {
    if (nlinks.get(ino) !== names.length) throw new Error(`${names.join(', ')} share an inode whose link count is ${nlinks.get(ino)}`);
    if (names.length > 1) lines.push(`linked: ${names.join(' ')}`);
  }
  return lines;
}

async function race(t: Test, kind: OverlayKind): Promise<void> {
  const box = await Sandbox.create(t, `name-races-${kind}`);
  const lower = box.dir('lower');
  fs.mkdirSync(path.join(lower, 'd'));
  fs.writeFileSync(path.join(lower, 'd/f0'), Buffer.alloc(5000, 0x41));
  fs.writeFileSync(path.join(lower, 'd/f1'), Buffer.alloc(7000, 0x42));
  fs.mkdirSync(path.join(lower, 'd/f2'));
  const dirs = { lowers: [lower], upper: box.dir('upper'), work: box.dir('work') };
  const m = box.mount(kind, { ...dirs, mnt: box.dir('mnt') });
  const dir = path.join(m.mnt, 'd');

  const reports = await Promise.all(Array.from({ length: PROCESSES }, (_, i) => runWorker(dir, i + 1)));
  const errors: Record<string, number> = {};
  for (const r of reports) for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + n;
  t.same(reports.flatMap((r) => r.unexpected), [], `${kind}: no process got an errno a race cannot explain (counts: ${JSON.stringify(errors)})`);
  t.equal(reports.reduce((n, r) => n + r.ok, 0) + Object.values(errors).reduce((a, b) => a + b, 0), PROCESSES * OPS, 'every operation answered');

  let seen: string[] = [];
  t.doesNotThrow(() => (seen = snapshot(dir)), `${kind}: the tree is consistent afterwards`);
  box.unmount(m);
  // What the candidate left on disk must be what it showed: the kernel reads the same layers.
  const again = box.mount('kernel', { ...dirs, mnt: box.dir('remount') });
  let reread: string[] = [];
  t.doesNotThrow(() => (reread = snapshot(path.join(again.mnt, 'd'))), 'the kernel finds the layers left behind consistent');
  t.same(reread, seen, 'the kernel shows the same names, types, contents and links');
  box.unmount(again);
}

t.test('kernel overlayfs: the oracle shows no unexplained errno and a consistent tree', (t) => race(t, 'kernel'));
t.test(`${candidate}: opens, creates, unlinks and renames racing on the same names`, (t) => race(t, candidate));
