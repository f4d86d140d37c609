/**
 * Shared by the data-safety tests (daemon-safety, daemon-lost-found): small OCI images, daemons on a temp root
 * (optionally on a small tmpfs), direct LevelDB edits that stand for what a crash or a damaged log leaves, and
 * cheap JSON API checks.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { createLogger } from '../../lib/log.js';
import { Metastore } from '../../lib/store/metastore.js';
import { writeOciLayout } from '../fixtures/store-fixtures.js';
import { makeLayer, rawRequest, startDaemon, stagedExecStart, tempDir, type DaemonHandle, type Teardown } from './daemon-harness.js';

export interface MountJson { Name: string; Id: string; State: { Status: string }; Sources: { reference: string; layerIds: string[]; imageId?: string }[] }
export interface LayerJson { chainID: string; holders: string[]; path: string }
export interface ImageJson { id: string; names: string[]; chainIDs: string[] }
export interface Entry { Name: string; Path: string; Kind: string }
export interface InfoJson { LostAndFound: Entry[]; RetainedUppers: Entry[]; StoreError: string | null }
export interface FsckJson { Problems: { subject: string; problem: string; repair: string | null; repaired: boolean }[]; Remaining: number; StoreError: string | null }

/** An OCI layout holding one image whose single layer has `files`. */
export function ociImage(dir: string, name: string, files: Record<string, string>): string {
  const src = makeLayer(path.join(dir, `src-${name}`), files);
  const tar = path.join(dir, `${name}.tar`);
  const r = spawnSync('tar', ['--create', '--format=posix', '--sort=name', '-C', src, '-f', tar, '.']);
  if (r.status !== 0) throw new Error(`tar failed: ${r.stderr}`);
  const layout = path.join(dir, `oci-${name}`);
  writeOciLayout(layout, [fs.readFileSync(tar)], name);
  return layout;
}

export async function setUp(t: Teardown, label: string, options: { tmpfsMiB?: number; env?: NodeJS.ProcessEnv } = {}) {
  const dir = tempDir(t, label);
  let stateFs = dir;
  if (options.tmpfsMiB !== undefined) {
    stateFs = path.join(dir, 'fs');
    fs.mkdirSync(stateFs);
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${options.tmpfsMiB}m,mode=0700`, 'tmpfs', stateFs], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mount tmpfs: ${r.stderr}`);
  }
  const daemonOptions = { root: path.join(stateFs, 'state'), socket: path.join(dir, 'strata.sock'), execStart: stagedExecStart(path.join(dir, 'install')), env: options.env };
  const daemon = await startDaemon(t, daemonOptions);
  return { dir, stateFs, daemon, daemonOptions };
}

export function ok(t: Test, daemon: DaemonHandle, args: string[], what: string): string {
  const r = daemon.cli(args);
  t.equal(r.status, 0, `${what}: ${r.stderr}`);
  return r.stdout;
}

export function target(dir: string, name: string): string {
  const p = path.join(dir, name);
  fs.mkdirSync(p, { recursive: true });
  return p;
}

/** A JSON API request (cheaper than a CLI process, for checks that are not about the CLI's output). */
export async function api<T>(daemon: DaemonHandle, method: string, urlPath: string): Promise<T> {
  const r = await rawRequest(daemon.socket, method, urlPath);
  if (r.status >= 300) throw new Error(`${method} ${urlPath}: ${r.status} ${r.body}`);
  return JSON.parse(r.body) as T;
}
export const info = (daemon: DaemonHandle) => api<InfoJson>(daemon, 'GET', '/info');
export const holders = async (daemon: DaemonHandle, layer: string) => (await api<LayerJson>(daemon, 'GET', `/layers/${encodeURIComponent(layer)}/json`)).holders.sort();

/** Edits the stopped daemon's LevelDB directly, as a crash or a damaged log would have left it. */
export async function editStore(root: string, edit: (store: Metastore) => Promise<void>): Promise<void> {
  const store = await Metastore.open(path.join(root, 'db'), createLogger({ level: 'silent' }));
  try {
    await edit(store);
  } finally {
    await store.close();
  }
}

