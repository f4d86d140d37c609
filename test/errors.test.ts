// The error table in lib/errors.ts and the one in docs/errors.md must list the same codes with the same
// HTTP statuses: the docs are what users read when a command prints a code.
import fs from 'node:fs';
import t from 'tap';
import { STRATA_ERRORS, StrataError, errnoOf } from '../lib/errors.js';

const docs = fs.readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
const documented = new Map<string, number>();
for (const match of docs.matchAll(/^\| `(STRATA_[A-Z_]+)` \| (\d+) \|/gm)) {
  documented.set(match[1] as string, Number(match[2]));
}

t.test('every code in lib/errors.ts is documented with its status', async (t) => {
  for (const [code, spec] of Object.entries(STRATA_ERRORS)) {
    t.equal(documented.get(code), spec.status, `${code} documented as ${spec.status}`);
  }
});

t.test('docs/errors.md lists no code the table lacks', async (t) => {
  for (const code of documented.keys()) t.ok(code in STRATA_ERRORS, `${code} exists in lib/errors.ts`);
});

t.test('StrataError carries its code and status; errno names map to numbers', async (t) => {
  const err = new StrataError('STRATA_IN_USE', 'layer x is used by mount:y');
  t.equal(err.code, 'STRATA_IN_USE');
  t.equal(err.status, 409);
  t.equal(errnoOf('ENOENT'), 2);
  t.equal(errnoOf('ENOTEMPTY'), 39);
  t.equal(errnoOf('NOT_AN_ERRNO'), 5, 'unknown names become EIO');
});
