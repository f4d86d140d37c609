/**
 * The import direction of docs/architecture.md's map, checked on the source: every import under lib/ and daemon/
 * is parsed (static, side-effect, re-export and dynamic forms) and resolved to a repository path.
 *  - lib/union (the overlay semantics) imports no transport (lib/fuse, fuse-native) and nothing above it;
 *  - lib/cli and daemon/ never import each other: both depend on the services in lib/;
 *  - nothing in lib/ imports daemon/;
 *  - only lib/fuse speaks fuse-native, and only lib/fuse turns errors into errnos (lib/errors.ts owns the table).
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface SourceFile {
  /** Repository-relative, with forward slashes: 'lib/union/dir.ts'. */
  file: string;
  /** The code with comments removed (string contents kept). */
  code: string;
  /** Each import: a package name ('fuse-native', 'node:fs') or a repository-relative path without extension. */
  imports: string[];
}

function listTs(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(repo, dir), { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) out.push(...listTs(rel));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

/** Drops block and line comments, leaving string and template literals alone. */
function stripComments(src: string): string {
  let out = '';
  for (let i = 0; i < src.length;) {
    const c = src[i]!;
    if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      i = end < 0 ? src.length : end + 2;
    } else if (c === '/' && src[i + 1] === '/') {
      const end = src.indexOf('\n', i);
      i = end < 0 ? src.length : end;
    } else if (c === '\'' || c === '"' || c === '`') {
      let j = i + 1;
      while (j < src.length && src[j] !== c) j += src[j] === '\\' ? 2 : 1;
      out += src.slice(i, j + 1);
      i = j + 1;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const IMPORT_PATTERNS = [
  // import x from '…', import { a } from '…', import type …, export { a } from '…', export * from '…'
  /^\s*(?:import|export)\s[^'";]*?\bfrom\s*(['"])([^'"]+)\1/gm,
  // import '…'
  /^\s*import\s*(['"])([^'"]+)\1/gm,
  // await import('…'), require('…'), require.resolve('…')
  /\b(?:import|require|require\.resolve)\(\s*(['"])([^'"]+)\1/g,
];

function parse(file: string): SourceFile {
  const code = stripComments(readFileSync(path.join(repo, file), 'utf8'));
  const imports: string[] = [];
  for (const pattern of IMPORT_PATTERNS) {
    for (const m of code.matchAll(pattern)) {
      const spec = m[2]!;
      imports.push(spec.startsWith('.') ? path.posix.join(path.posix.dirname(file), spec).replace(/\.js$/, '') : spec);
    }
  }
  return { file, code, imports };
}

const sources = [...listTs('lib'), ...listTs('daemon')].map(parse);
const under = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);

t.test('the parser sees the imports it should', async (t) => {
  t.ok(sources.length > 50, `${sources.length} source files under lib/ and daemon/`);
  const union = sources.find((s) => s.file === 'lib/union/dir.ts');
  t.ok(union?.imports.includes('lib/errors'), 'lib/union/dir.ts imports lib/errors');
  const daemon = sources.find((s) => s.file === 'daemon/stratad.ts');
  t.ok(daemon?.imports.some((i) => under(i, 'lib/mounts')), 'daemon/stratad.ts imports lib/mounts');
  const fuse = sources.filter((s) => s.imports.includes('fuse-native'));
  t.ok(fuse.length > 0, 'someone imports fuse-native (lib/fuse)');
});

function violations(from: (file: string) => boolean, forbidden: (target: string) => boolean): string[] {
  return sources
    .filter((s) => from(s.file))
    .flatMap((s) => s.imports.filter(forbidden).map((target) => `${s.file} imports ${target}`));
}

t.test('lib/union imports no transport', async (t) => {
  t.same(violations(
    (f) => under(f, 'lib/union'),
    (i) => under(i, 'lib/fuse') || i === 'fuse-native' || under(i, 'lib/cli') || under(i, 'daemon') || under(i, 'lib/api'),
  ), []);
  // The kernel transport's addon and device are loaded by path, not by import.
  const named = sources.filter((s) => under(s.file, 'lib/union') && /strata_fuse|\/dev\/fuse/.test(s.code)).map((s) => s.file);
  t.same(named, [], 'no lib/union code names the strata_fuse addon or /dev/fuse');
});

t.test('lib/cli and daemon never import each other; lib never imports daemon', async (t) => {
  t.same(violations((f) => under(f, 'lib/cli'), (i) => under(i, 'daemon')), [], 'lib/cli → daemon');
  t.same(violations((f) => under(f, 'daemon'), (i) => under(i, 'lib/cli')), [], 'daemon → lib/cli');
  t.same(violations((f) => under(f, 'lib'), (i) => under(i, 'daemon')), [], 'lib → daemon');
});

t.test('only lib/fuse speaks fuse-native', async (t) => {
  t.same(violations((f) => !under(f, 'lib/fuse'), (i) => i === 'fuse-native' || i.startsWith('fuse-native/')), []);
});

t.test('only lib/fuse turns errors into errnos', async (t) => {
  const outside = sources.filter((s) => !under(s.file, 'lib/fuse') && s.file !== 'lib/errors.ts');
  const found: string[] = [];
  for (const s of outside) {
    if (s.imports.includes('lib/fuse/errno')) found.push(`${s.file} imports lib/fuse/errno`);
    // The helpers themselves (errnoOf is the table's lookup; toNegativeErrno is the FUSE boundary).
    for (const name of ['errnoOf', 'toNegativeErrno']) {
      if (new RegExp(`\\b${name}\\b`).test(s.code)) found.push(`${s.file} uses ${name}`);
    }
    if (/\bconstants\.errno\b/.test(s.code)) found.push(`${s.file} reads os.constants.errno`);
    // A negated errno: `-errno`, `-err.errno`, `- e.errno`.
    for (const m of s.code.matchAll(/(?<![\w)\]])-\s*[\w.]*\berrno\b/g)) found.push(`${s.file} computes ${m[0]}`);
  }
  t.same(found, []);
});
