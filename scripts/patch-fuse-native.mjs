#!/usr/bin/env node
/**
 * Applies Strata's patch to node_modules/fuse-native and rebuilds it from source (see docs/native.md).
 *
 * Idempotent: node_modules/fuse-native/.strata-patched holds a hash of the patch files. When it matches and the
 * build is present, this is a no-op. When the patch changed, the pristine sources (kept in .strata-orig/ on first
 * run) are restored and the new patch applied. A fresh `npm ci` replaces the package, marker and all, so the
 * patch is simply applied again.
 *
 * Usage: node scripts/patch-fuse-native.mjs [--force]
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PATCHED_FILES = ['fuse-native.c', 'index.js'];
/** The fuse-native release the patches were written against; any other release is refused, not patched by guess. */
const PATCHED_RELEASE = '2.2.6';
/**
 * Must equal strata_patch_version in the C patch and FUSE_NATIVE_PATCH_VERSION in lib/fuse/binding.ts (which
 * checks it at run time): the proof that our build, not the prebuilt, is loaded.
 */
const EXPECTED_PATCH_VERSION = 1;

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..');
const patchDir = path.join(here, 'fuse-native');
const require = createRequire(path.join(repoRoot, 'package.json'));

function fail(message) {
  process.stderr.write(`patch-fuse-native: ${message}\n`);
  process.exit(1);
}

function run(command, args, cwd) {
  try {
    return execFileSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  } catch (err) {
    const output = `${err.stdout ?? ''}${err.stderr ?? ''}`.trim();
    fail(`${command} ${args.join(' ')} failed in ${cwd}:\n${output || String(err)}`);
  }
}

const packageDir = path.dirname(require.resolve('fuse-native/package.json'));
const installedRelease = JSON.parse(fs.readFileSync(path.join(packageDir, 'package.json'), 'utf8')).version;
if (installedRelease !== PATCHED_RELEASE) {
  fail(`${packageDir} is fuse-native ${installedRelease}, but the patches in ${patchDir} were written for ${PATCHED_RELEASE}: ` +
    `install fuse-native@${PATCHED_RELEASE} (npm ci) or port the patches`);
}
const marker = path.join(packageDir, '.strata-patched');
const originals = path.join(packageDir, '.strata-orig');
const builtBinary = path.join(packageDir, 'build', 'Release', 'fuse.node');

const patches = fs.readdirSync(patchDir).filter((name) => name.endsWith('.patch')).sort();
if (patches.length === 0) fail(`no .patch files in ${patchDir}`);
const hash = createHash('sha256');
for (const name of patches) hash.update(name).update('\0').update(fs.readFileSync(path.join(patchDir, name)));
const patchHash = hash.digest('hex');

const force = process.argv.includes('--force');
const markerValue = fs.existsSync(marker) ? fs.readFileSync(marker, 'utf8').trim() : null;
if (!force && markerValue === patchHash && fs.existsSync(builtBinary)) process.exit(0);

// Start from pristine sources: the backup when one exists (an earlier patch was applied), else the package as
// npm installed it, which is then backed up first.
if (fs.existsSync(originals)) {
  for (const file of PATCHED_FILES) fs.copyFileSync(path.join(originals, file), path.join(packageDir, file));
} else {
  if (markerValue !== null) fail(`${marker} exists but ${originals} does not; reinstall fuse-native (npm ci)`);
  const staging = `${originals}.tmp`;
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging);
  for (const file of PATCHED_FILES) fs.copyFileSync(path.join(packageDir, file), path.join(staging, file));
  fs.renameSync(staging, originals);
}
fs.rmSync(marker, { force: true });

// --fuzz=0: every context line must match exactly, so a patch never lands in the wrong place of changed sources.
for (const name of patches) {
  run('patch', ['-p1', '--forward', '--batch', '--fuzz=0', '--no-backup-if-mismatch', '-i', path.join(patchDir, name)], packageDir);
}

// node-gyp from our devDependencies; --nodedir points at the headers of the running node so nothing is downloaded.
const nodeGyp = require.resolve('node-gyp/bin/node-gyp.js');
const gypArgs = [nodeGyp, 'rebuild', '--loglevel=error'];
const nodePrefix = path.resolve(path.dirname(process.execPath), '..');
if (fs.existsSync(path.join(nodePrefix, 'include', 'node', 'node_api.h'))) gypArgs.push(`--nodedir=${nodePrefix}`);
run(process.execPath, gypArgs, packageDir);

// node-gyp-build prefers build/Release over prebuilds/; prove that the module really loads our build.
const probe = `const Fuse = require(${JSON.stringify(packageDir)}); process.stdout.write(String(Fuse.STRATA_PATCH_VERSION))`;
const loaded = run(process.execPath, ['-e', probe], repoRoot).trim();
if (loaded !== String(EXPECTED_PATCH_VERSION)) {
  fail(`fuse-native loads patch version "${loaded}", expected ${EXPECTED_PATCH_VERSION} (is the prebuilt loaded?)`);
}

const tmpMarker = `${marker}.tmp`;
fs.writeFileSync(tmpMarker, `${patchHash}\n`);
fs.renameSync(tmpMarker, marker);
process.stderr.write(`patch-fuse-native: patched and rebuilt ${packageDir}\n`);
