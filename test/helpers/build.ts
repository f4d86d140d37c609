/**
 * The suites run the real programs from dist/, so a missing build must fail the run, never skip a test: a
 * skipped suite on a machine without the build would report green while testing nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The absolute path of a built file (relative to the repo), or an error saying how to build it. */
export function builtFile(relative: string): string {
  const file = path.join(repoRoot, relative);
  if (!fs.existsSync(file)) {
    throw new Error(`${relative} is not built: run \`npm run build\` first (the tests run the programs from dist/)`);
  }
  return file;
}
