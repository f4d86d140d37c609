/**
 * Loading fuse-native. Only Strata's patched build (scripts/fuse-native/, docs/native.md) may serve a mount:
 * upstream's index.js and prebuilt binary speak other stat and statfs layouts (millisecond times, 32-bit inode
 * numbers, no create flags), so they would mount and then report wrong attributes without any error. The check
 * here turns that into a clear failure before anything is mounted.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { StrataError } from '../errors.js';

/**
 * The patch version this code was written against. Equal to `strata_patch_version` in
 * scripts/fuse-native/0001-fuse-native-c.patch and EXPECTED_PATCH_VERSION in scripts/patch-fuse-native.mjs
 * (test/fuse-binding.test.ts checks that all three agree).
 */
export const FUSE_NATIVE_PATCH_VERSION = 1;

const HOW_TO_FIX = 'run `node scripts/patch-fuse-native.mjs --force` (or scripts/setup.sh) in the Strata checkout';

/** Returns `loaded` when it is the patched fuse-native of the expected version; `where` names it in the error. */
export function checkPatchedFuseNative<T>(loaded: unknown, where: string): T {
  const exported = typeof loaded === 'function' || (typeof loaded === 'object' && loaded !== null)
    ? (loaded as { STRATA_PATCH_VERSION?: unknown }).STRATA_PATCH_VERSION
    : undefined;
  if (exported === undefined) {
    throw new StrataError('STRATA_MOUNT_FAILED',
      `fuse-native at ${where} is not Strata's patched build (it exports no STRATA_PATCH_VERSION; upstream's prebuilt ` +
      `binary would report wrong inode numbers and times): ${HOW_TO_FIX}`);
  }
  if (exported !== FUSE_NATIVE_PATCH_VERSION) {
    throw new StrataError('STRATA_MOUNT_FAILED',
      `fuse-native at ${where} carries Strata patch version ${String(exported)}, but this build of Strata needs ` +
      `version ${FUSE_NATIVE_PATCH_VERSION}: ${HOW_TO_FIX}`);
  }
  return loaded as T;
}

/** Loads fuse-native as resolved from this file and checks it is the patched build. */
export function loadFuseNative<T>(): T {
  const require = createRequire(import.meta.url);
  let where: string;
  try {
    where = path.dirname(require.resolve('fuse-native/package.json'));
  } catch (err) {
    throw new StrataError('STRATA_MOUNT_FAILED', 'fuse-native is not installed: run `npm ci`, then `node scripts/patch-fuse-native.mjs` (or scripts/setup.sh)', { cause: err });
  }
  let loaded: unknown;
  try {
    loaded = require('fuse-native');
  } catch (err) {
    // The patched index.js itself refuses a binary without the patch (the prebuilt one): report it the same way.
    throw new StrataError('STRATA_MOUNT_FAILED', `cannot load fuse-native from ${where}: ${(err as Error).message}; ${HOW_TO_FIX}`, { cause: err });
  }
  return checkPatchedFuseNative<T>(loaded, where);
}
