// One process of the name-race test (test/union/name-races.test.ts). Plain JS so it starts fast without a loader.
// It hammers a few names of one directory with changes that race those of its sibling processes on the same
// names: open for writing with O_CREAT, create with O_TRUNC, unlink, rename, link, truncate, chown, mkdir and
// rmdir. Every answer a racing process can legitimately get is counted; any other errno (ENXIO from a whiteout,
// EIO, ESTALE...) is reported with the operation that got it.
//
//   node name-race-worker.mjs DIR SEED OPS NAMES
//
// Prints one JSON line: { ops, ok, errors: { ENOENT: n, ... }, unexpected: ["op 12 open-write f1: ENXIO ..."] }.
import fs from 'node:fs';

const [dir, seedArg, opsArg, namesArg] = process.argv.slice(2);
const ops = Number(opsArg);
const names = Number(namesArg);
if (!dir || !Number.isInteger(ops) || !Number.isInteger(names) || names < 1) {
  process.stderr.write('usage: name-race-worker.mjs DIR SEED OPS NAMES\n');
  process.exit(2);
}

/** Answers that only say another process got there first (or that a name is of the other type just now). */
const EXPECTED = new Set(['ENOENT', 'EEXIST', 'EISDIR', 'ENOTDIR', 'EPERM']);

// xorshift32: one seed, one sequence.
let state = (Number(seedArg) * 2654435761) >>> 0 || 0x9e3779b9;
const rand = () => {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 2 ** 32;
};
const pick = (n) => Math.floor(rand() * n);
const name = () => `f${pick(names)}`;
const at = (n) => `${dir}/${n}`;

const payload = Buffer.alloc(8192, 0x61 + (Number(seedArg) % 26));
const { O_WRONLY, O_RDWR, O_CREAT } = fs.constants;

const withFd = (p, flags, fn) => {
  const fd = fs.openSync(p, flags, 0o644);
  try {
    fn(fd);
  } finally {
    fs.closeSync(fd);
  }
};

/** Weighted so that opens for writing meet unlinks and renames of the same name often. */
const OPS = [
  ['open-write', 6, (n) => withFd(at(n), O_WRONLY | O_CREAT, (fd) => fs.writeSync(fd, payload, 0, 1 + pick(4096), pick(4096)))],
  ['create-trunc', 4, (n) => fs.writeFileSync(at(n), payload.subarray(0, pick(4096)))],
  ['open-rdwr', 2, (n) => withFd(at(n), O_RDWR, (fd) => fs.writeSync(fd, payload, 0, 512, 0))],
  ['unlink', 6, (n) => fs.unlinkSync(at(n))],
  ['rename', 4, (n) => fs.renameSync(at(n), at(name()))],
  ['link', 2, (n) => fs.linkSync(at(n), at(name()))],
  ['truncate', 2, (n) => fs.truncateSync(at(n), pick(8192))],
  ['chown', 1, (n) => fs.lchownSync(at(n), pick(3) * 1000, pick(3) * 1000)],
  ['mkdir', 1, (n) => fs.mkdirSync(at(n))],
  ['rmdir', 1, (n) => fs.rmdirSync(at(n))],
  ['stat', 2, (n) => fs.lstatSync(at(n))],
];
const total = OPS.reduce((sum, [, w]) => sum + w, 0);

const report = { ops, ok: 0, errors: {}, unexpected: [] };
for (let i = 0; i < ops; i++) {
  let roll = pick(total);
  let chosen = OPS[0];
  for (const op of OPS) {
    if (roll < op[1]) {
      chosen = op;
      break;
    }
    roll -= op[1];
  }
  const [label, , run] = chosen;
  const n = name();
  try {
    run(n);
    report.ok++;
  } catch (err) {
    const code = err.code ?? 'UNKNOWN';
    report.errors[code] = (report.errors[code] ?? 0) + 1;
    if (!EXPECTED.has(code) && report.unexpected.length < 10) report.unexpected.push(`op ${i} ${label} ${n}: ${code} ${err.message}`);
  }
}
process.stdout.write(`${JSON.stringify(report)}\n`);
