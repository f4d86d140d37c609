/**
 * Loads one of the addons that `node-gyp rebuild --directory native` builds (native/binding.gyp), from the build
 * of this checkout. Both layouts work: dist/lib/native (the build) and lib/native (tests run through tsx).
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { StrataError } from '../errors.js';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

export function loadNativeAddon<T>(name: string): T {
  const candidates = [
    path.resolve(here, `../../../native/build/Release/${name}.node`),
    path.resolve(here, `../../native/build/Release/${name}.node`),
  ];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      return require(candidate) as T;
    } catch (err) {
      lastError = err;
    }
  }
  throw new StrataError('STRATA_INTERNAL', `${name} addon not built or not loadable (run "bash scripts/setup.sh")`, { cause: lastError });
}
