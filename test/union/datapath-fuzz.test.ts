/**
 * Data-path fuzzer: seeded random reads, writes, truncates, fallocates (every mode) and mmap reads/writes on one
 * file through the mount, each checked against an in-memory model of the file. The file starts in a lower layer,
 * so the first write open copies it up under an fd that was reading the lower file.
 *
 * The same sequence runs on kernel overlayfs first: that validates the model (and the sequence), then the candidate
 * must match the model too. FUSE never forwards COLLAPSE_RANGE/INSERT_RANGE (EOPNOTSUPP): the model follows whatever
 * the call answered, and only a success changes it.
 *
 * mmap goes through a python3 process per op (Node has no mmap), so it is 2% of the ops: they cost the most.
 *
 * STRATA_FUZZ_OPS (default 1500, short enough for every run; 100000 for the long run) and STRATA_FUZZ_SEED (default 1;
 * "random" to explore) pick the sequence; STRATA_FUZZ_KERNEL=0 runs the candidate only; STRATA_FUZZ_OPTIONS adds
 * -o options to the candidate's mount (passthrough=off: every read and write reaches the server). The 100k run takes
 * longer than tap's default timeout: run it with `npx tap -t 0`.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { sys } from '../../lib/native/index.js';
import { prng } from '../helpers/random.js';
import { candidateKind, candidateMissing, run, Sandbox, type OverlayKind } from '../helpers/sandbox.js';
import { buildLayer } from '../helpers/tree.js';

const OPS = Number(process.env.STRATA_FUZZ_OPS ?? 1500);
const SEED = process.env.STRATA_FUZZ_SEED === 'random' ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.STRATA_FUZZ_SEED ?? 1);
const MAX_SIZE = 1024 * 1024;
const BLOCK = 4096;

const FALLOC = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, COLLAPSE_RANGE: 0x08, ZERO_RANGE: 0x10, INSERT_RANGE: 0x20 } as const;
const FALLOC_MODES = [0, FALLOC.KEEP_SIZE, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, FALLOC.ZERO_RANGE, FALLOC.ZERO_RANGE | FALLOC.KEEP_SIZE, FALLOC.COLLAPSE_RANGE, FALLOC.INSERT_RANGE];

type FuzzOp =
  | { op: 'read'; offset: number; length: number }
  | { op: 'write'; offset: number; data: Buffer }
  | { op: 'truncate'; size: number }
  | { op: 'fallocate'; mode: number; offset: number; length: number }
  | { op: 'mmapRead'; offset: number; length: number }
  | { op: 'mmapWrite'; offset: number; data: Buffer }
  | { op: 'reopen' }
  | { op: 'readByPath' };

/** The whole sequence, a pure function of the seed (sizes follow the model, which is replayed while generating). */
function generate(seed: number, count: number, initialSize: number): FuzzOp[] {
  const rand = prng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  let size = initialSize;
  const ops: FuzzOp[] = [];
  const offsetFor = () => (rand() < 0.2 ? int(BLOCK * 4) : int(Math.min(MAX_SIZE, Math.max(size, 1) + 65536)));
  const lengthFor = () => (rand() < 0.3 ? 1 + int(64) : 1 + int(65536));
  for (let i = 0; i < count; i++) {
    const r = rand();
    let op: FuzzOp;
    if (r < 0.28) op = { op: 'read', offset: offsetFor(), length: lengthFor() };
    else if (r < 0.56) {
      const offset = offsetFor();
      const length = Math.min(lengthFor(), MAX_SIZE - offset);
      op = { op: 'write', offset, data: Buffer.from(Array.from({ length: Math.max(length, 1) }, () => int(256))) };
    } else if (r < 0.64) op = { op: 'truncate', size: rand() < 0.5 ? int(size + 1) : int(MAX_SIZE) };
    else if (r < 0.86) {
      const mode = FALLOC_MODES[int(FALLOC_MODES.length)]!;
      // collapse/insert want block-aligned ranges (ext4); a few unaligned ones check the EINVAL path.
      const aligned = (mode === FALLOC.COLLAPSE_RANGE || mode === FALLOC.INSERT_RANGE) && rand() < 0.9;
      const offset = aligned ? int(Math.max(size, BLOCK) / BLOCK) * BLOCK : offsetFor();
      const length = aligned ? (1 + int(4)) * BLOCK : lengthFor();
      op = { op: 'fallocate', mode, offset, length: Math.min(length, MAX_SIZE - Math.min(offset, MAX_SIZE - 1)) };
    } else if (r < 0.872) op = { op: 'mmapRead', offset: int(Math.max(size, 1)), length: lengthFor() };
    else if (r < 0.88) {
      const offset = int(Math.max(size, 1));
      op = { op: 'mmapWrite', offset, data: Buffer.from(Array.from({ length: 1 + int(256) }, () => int(256))) };
    } else if (r < 0.97) op = { op: 'reopen' };
    else op = { op: 'readByPath' };
    ops.push(op);
    size = applyToSize(size, op);
  }
  return ops;
}

/** The size after `op` if it succeeds (used only to keep generated offsets near the file). */
function applyToSize(size: number, op: FuzzOp): number {
  switch (op.op) {
    case 'write': return Math.max(size, op.offset + op.data.length);
    case 'truncate': return op.size;
    case 'fallocate':
      if ((op.mode & FALLOC.KEEP_SIZE) === 0 && (op.mode === 0 || op.mode === FALLOC.ZERO_RANGE)) return Math.max(size, op.offset + op.length);
      return size;
    default: return size;
  }
}

/** The in-memory model of the file's bytes. */
class Model {
  data: Buffer;
  constructor(initial: Buffer) {
    this.data = Buffer.from(initial);
  }
  resize(size: number): void {
    if (size <= this.data.length) this.data = this.data.subarray(0, size);
    else this.data = Buffer.concat([this.data, Buffer.alloc(size - this.data.length)]);
  }
  write(offset: number, bytes: Buffer): void {
    if (bytes.length === 0) return; // a write of nothing extends nothing, even past the end
    if (offset + bytes.length > this.data.length) this.resize(offset + bytes.length);
    bytes.copy(this.data, offset);
  }
  zero(from: number, to: number): void {
    this.data.fill(0, Math.min(from, this.data.length), Math.min(to, this.data.length));
  }
  /** Applies a fallocate that succeeded. */
  fallocate(mode: number, offset: number, length: number): void {
    const end = offset + length;
    if (mode === FALLOC.COLLAPSE_RANGE) {
      this.data = Buffer.concat([this.data.subarray(0, offset), this.data.subarray(end)]);
    } else if (mode === FALLOC.INSERT_RANGE) {
      this.data = Buffer.concat([this.data.subarray(0, offset), Buffer.alloc(length), this.data.subarray(offset)]);
    } else {
      if ((mode & (FALLOC.PUNCH_HOLE | FALLOC.ZERO_RANGE)) !== 0) this.zero(offset, end);
      if ((mode & FALLOC.KEEP_SIZE) === 0 && end > this.data.length) this.resize(end);
    }
  }
}

function firstDifference(a: Buffer, b: Buffer): string {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `byte ${i}: expected ${a[i]} got ${b[i]}`;
  return `length: expected ${a.length} got ${b.length}`;
}

/** mmap through python3 (Node has none): MAP_SHARED, so the bytes go through the page cache of the mount. */
function mmapOp(file: string, offset: number, lengthOrData: number | Buffer): Buffer {
  const write = Buffer.isBuffer(lengthOrData);
  const script = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
size = os.fstat(fd).st_size
off, n = int(sys.argv[2]), int(sys.argv[3])
if size == 0:
    sys.stdout.buffer.write(b''); sys.exit(0)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
n = max(0, min(n, size - off))
if sys.argv[4] == 'w':
    data = sys.stdin.buffer.read()[:n]
    m[off:off + len(data)] = data
    m.flush()
    sys.stdout.buffer.write(str(len(data)).encode())
else:
    sys.stdout.buffer.write(m[off:off + n].hex().encode())
m.close(); os.close(fd)
`;
  const n = write ? lengthOrData.length : lengthOrData;
  const r = run('python3', ['-c', script, file, String(offset), String(n), write ? 'w' : 'r'], { input: write ? lengthOrData : undefined });
  if (r.status !== 0) throw new Error(`mmap helper failed: ${r.stderr.trim()}`);
  return write ? Buffer.from(r.stdout) : Buffer.from(r.stdout, 'hex');
}

interface RunResult {
  failure?: string;
  counts: Record<string, number>;
}

/** Runs the sequence on `file` (in a mount), checking every op against the model. */
function runSequence(file: string, initial: Buffer, ops: FuzzOp[]): RunResult {
  const model = new Model(initial);
  const counts: Record<string, number> = {};
  const count = (key: string) => { counts[key] = (counts[key] ?? 0) + 1; };
  // A reader opened while the file is still only in the lower layer: it must follow the copy-up.
  const lowerReader = fs.openSync(file, 'r');
  let fd = fs.openSync(file, 'r+');
  try {
    for (const [i, op] of ops.entries()) {
      const where = `op #${i} ${op.op}${'offset' in op ? ` @${op.offset}` : ''}`;
      switch (op.op) {
        case 'read': {
          const buf = Buffer.alloc(op.length);
          const n = fs.readSync(fd, buf, 0, op.length, op.offset);
          const expected = model.data.subarray(Math.min(op.offset, model.data.length), Math.min(op.offset + op.length, model.data.length));
          if (!buf.subarray(0, n).equals(expected)) return { failure: `${where} len ${op.length}: ${firstDifference(expected, buf.subarray(0, n))}`, counts };
          break;
        }
        case 'write':
          fs.writeSync(fd, op.data, 0, op.data.length, op.offset);
          model.write(op.offset, op.data);
          break;
        case 'truncate':
          fs.ftruncateSync(fd, op.size);
          model.resize(op.size);
          break;
        case 'fallocate':
          try {
            sys.fallocate(fd, op.mode, op.offset, op.length);
            model.fallocate(op.mode, op.offset, op.length);
            count(`fallocate 0x${op.mode.toString(16)} ok`);
          } catch (err) {
            const code = (err as { code?: string }).code ?? String(err);
            // EOPNOTSUPP (FUSE: collapse/insert) and EINVAL (unaligned or past the end) leave the file as it was.
            if (code !== 'EOPNOTSUPP' && code !== 'EINVAL') return { failure: `${where} mode 0x${op.mode.toString(16)}: ${code}`, counts };
            count(`fallocate 0x${op.mode.toString(16)} ${code}`);
          }
          break;
        case 'mmapRead': {
          const got = mmapOp(file, op.offset, op.length);
          const expected = model.data.subarray(Math.min(op.offset, model.data.length), Math.min(op.offset + op.length, model.data.length));
          if (!got.equals(expected)) return { failure: `${where}: ${firstDifference(expected, got)}`, counts };
          break;
        }
        case 'mmapWrite': {
          if (model.data.length === 0) break;
          const n = Number(mmapOp(file, op.offset, op.data).toString());
          model.write(op.offset, op.data.subarray(0, n));
          break;
        }
        case 'reopen':
          fs.closeSync(fd);
          fd = fs.openSync(file, 'r+');
          break;
        case 'readByPath': {
          const got = fs.readFileSync(file);
          if (!got.equals(model.data)) return { failure: `${where}: ${firstDifference(model.data, got)}`, counts };
          break;
        }
      }
      count(op.op);
      const size = fs.fstatSync(fd).size;
      if (size !== model.data.length) return { failure: `${where}: fstat size ${size}, model ${model.data.length}`, counts };
    }
    const whole = fs.readFileSync(file);
    if (!whole.equals(model.data)) return { failure: `final contents: ${firstDifference(model.data, whole)}`, counts };
    const viaOldReader = Buffer.alloc(model.data.length);
    const n = fs.readSync(lowerReader, viaOldReader, 0, viaOldReader.length, 0);
    if (!viaOldReader.subarray(0, n).equals(model.data)) return { failure: `the fd opened before copy-up reads stale data: ${firstDifference(model.data, viaOldReader.subarray(0, n))}`, counts };
    return { counts };
  } finally {
    fs.closeSync(fd);
    fs.closeSync(lowerReader);
  }
}

t.test(`data-path fuzzer: ${OPS} ops, seed ${SEED}`, async (t) => {
  const candidate = candidateKind();
  const missing = candidateMissing();
  if (missing) {
    t.fail(`candidate ${candidate} cannot run: ${missing}`);
    return;
  }
  t.comment(`replay with STRATA_FUZZ_SEED=${SEED} STRATA_FUZZ_OPS=${OPS}`);
  const box = await Sandbox.create(t, 'fuzz', { hangLimitMs: 3_000_000 });
  const initial = crypto.createHash('sha256').update(String(SEED)).digest();
  const initialData = Buffer.concat(Array.from({ length: 3000 }, () => initial)); // 96000 bytes, not block-aligned
  const ops = generate(SEED, OPS, initialData.length);
  // STRATA_FUZZ_KERNEL=0 skips the kernel run (for long runs of a sequence whose model the kernel already validated).
  const kinds: OverlayKind[] = process.env.STRATA_FUZZ_KERNEL === '0' ? [candidate] : ['kernel', candidate];
  for (const kind of kinds) {
    await t.test(kind, async (tt) => {
      const base = box.dir(kind);
      const lower = path.join(base, 'lower');
      buildLayer(lower, { f: { type: 'file', content: initialData } });
      const dirs = { lowers: [lower], upper: box.dir(`${kind}/upper`), work: box.dir(`${kind}/work`), mnt: box.dir(`${kind}/mnt`) };
      // STRATA_FUZZ_OPTIONS: extra -o options for strata only (passthrough=off sends every read and write to the server).
      const extra = kind === 'kernel' ? [] : (process.env.STRATA_FUZZ_OPTIONS ?? '').split(',').filter(Boolean);
      box.mount(kind, dirs, extra);
      try {
        const result = runSequence(path.join(dirs.mnt, 'f'), initialData, ops);
        tt.comment(Object.entries(result.counts).sort().map(([k, n]) => `${k}×${n}`).join(', '));
        tt.equal(result.failure, undefined, `every op matches the model (seed ${SEED})`);
      } finally {
        box.unmount(dirs.mnt);
      }
    });
  }
});
