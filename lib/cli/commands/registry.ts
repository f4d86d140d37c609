/**
 * Registry commands: `strata image pull|push` (added to the image group) and `strata login|logout`
 * (see docs/registry.md). Passwords are read from stdin (`--password-stdin`) or typed at a terminal with echo
 * off; there is deliberately no password option, which would show in `ps` and shell history.
 */
import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { StrataError } from '../../errors.js';
import { openImageBackend } from '../backend.js';
import type { ImageBackend, RegistrySettings } from '../../images/service.js';
import { printJson } from '../output.js';
import { progressBars } from '../progress.js';
import type { TransferProgress } from '../../registry/service.js';
import type { StoreArgs, Sub } from './store-common.js';

/** The daemon's config file; the CLI honours its insecureRegistries too, so both agree on plain HTTP. */
const DAEMON_CONFIG_FILE = '/etc/strata/stratad.json';

interface RegistryArgs extends StoreArgs {
  'insecure-registry'?: string[];
  authfile?: string;
}

const sub = (spec: object): Sub => spec as Sub;

function registryOptions<T>(y: Argv<T>) {
  return y
    .option('insecure-registry', { type: 'string', array: true, describe: 'allow plain HTTP to this registry host[:port] (loopback always is)' })
    .option('authfile', { type: 'string', describe: 'credentials file (docker config.json format); default <root>/registry-auth.json, or $REGISTRY_AUTH_FILE' });
}

function settingsOf(argv: RegistryArgs): RegistrySettings {
  let fromConfig: string[] = [];
  try {
    const parsed = JSON.parse(readFileSync(DAEMON_CONFIG_FILE, 'utf8')) as { insecureRegistries?: unknown };
    if (Array.isArray(parsed.insecureRegistries)) fromConfig = parsed.insecureRegistries.filter((h): h is string => typeof h === 'string');
  } catch {
    // No config file (or an unreadable one, which stratad itself reports): loopback only.
  }
  return {
    insecureRegistries: [...fromConfig, ...(argv['insecure-registry'] ?? []).map(String)],
    authFile: argv.authfile ?? process.env.REGISTRY_AUTH_FILE,
  };
}

async function withRegistryBackend<T>(argv: RegistryArgs, work: (backend: ImageBackend) => Promise<T>): Promise<T> {
  const backend = await openImageBackend({ root: argv.root, socket: argv.socket, registry: settingsOf(argv) });
  try {
    return await work(backend);
  } finally {
    await backend.close();
  }
}

function barsFor(argv: StoreArgs) {
  const bars = progressBars({ json: argv.json });
  return {
    onProgress: (p: TransferProgress) => {
      const label = p.layer === 0 ? 'config' : `${p.digest.replace(/^sha256:/, '').slice(0, 12)} (${p.layer}/${p.layers})`;
      bars.update(`${p.layer}`, label, p.bytes, p.totalBytes, p.phase);
    },
    stop: () => bars.stop(),
  };
}

export const imagePullCommand = sub({
  command: 'pull <ref>',
  describe: 'pull an image from a registry ([HOST[:PORT]/]REPO[:TAG][@DIGEST])',
  builder: (y: Argv<StoreArgs>) => registryOptions(y)
    .positional('ref', { type: 'string', demandOption: true })
    .option('platform', { type: 'string', describe: 'os/arch[/variant] to take from a multi-platform index (default: linux and this machine\'s)' }),
  handler: async (argv: RegistryArgs & { ref: string; platform?: string }) => {
    const bars = barsFor(argv);
    const result = await withRegistryBackend(argv, (b) => b.pullImage(argv.ref, { platform: argv.platform, onProgress: bars.onProgress }))
      .finally(() => bars.stop());
    if (argv.json) return printJson(result);
    process.stdout.write(`${result.id} ${result.names.join(' ') || result.reference}\n`);
    process.stdout.write(`Digest: ${result.manifestDigest}\n`);
  },
});

export const imagePushCommand = sub({
  command: 'push <ref> [dest]',
  describe: 'push a stored image to a registry (to DEST, default its name REF)',
  builder: (y: Argv<StoreArgs>) => registryOptions(y)
    .positional('ref', { type: 'string', demandOption: true, describe: 'the stored image' })
    .positional('dest', { type: 'string', describe: 'HOST[:PORT]/REPO[:TAG] to push to' })
    .option('chunk-size', { type: 'number', describe: 'upload blobs larger than this many bytes in chunks of this size (default 64 MiB)' }),
  handler: async (argv: RegistryArgs & { ref: string; dest?: string; 'chunk-size'?: number }) => {
    const bars = barsFor(argv);
    const result = await withRegistryBackend(argv, (b) => b.pushImage(argv.ref, argv.dest, { chunkSize: argv['chunk-size'], onProgress: bars.onProgress }))
      .finally(() => bars.stop());
    if (argv.json) return printJson(result);
    process.stdout.write(`${result.reference}@${result.manifestDigest}\n`);
  },
});

export const loginCommand: CommandModule<StoreArgs, RegistryArgs & { server: string; username?: string; 'password-stdin': boolean }> = {
  command: 'login <server>',
  describe: 'store credentials for a registry (checked with the registry first)',
  builder: (y: Argv<StoreArgs>) => registryOptions(y)
    .positional('server', { type: 'string', demandOption: true, describe: 'registry host[:port]' })
    .option('username', { alias: 'u', type: 'string', describe: 'user name (asked for on a terminal when missing)' })
    .option('password-stdin', { type: 'boolean', default: false, describe: 'read the password from stdin' }) as unknown as Argv<RegistryArgs & { server: string; username?: string; 'password-stdin': boolean }>,
  handler: async (argv) => {
    const username = argv.username ?? (process.stdin.isTTY && !argv['password-stdin'] ? await prompt('Username: ', true) : undefined);
    if (username === undefined || username === '') throw new StrataError('STRATA_BAD_OPTION', 'login: give a user name with -u USER');
    let password: string;
    if (argv['password-stdin']) {
      password = (await readAll(process.stdin)).replace(/\r?\n$/, '');
    } else if (process.stdin.isTTY) {
      password = await prompt('Password: ', false);
    } else {
      throw new StrataError('STRATA_BAD_OPTION', 'login: stdin is not a terminal; pipe the password in with --password-stdin');
    }
    if (password === '') throw new StrataError('STRATA_BAD_OPTION', 'login: the password is empty');
    const result = await withRegistryBackend(argv, (b) => b.login(String(argv.server), { username, password }));
    if (argv.json) return printJson(result);
    process.stdout.write(`Login Succeeded (${result.registry})\n`);
  },
};

export const logoutCommand: CommandModule<StoreArgs, RegistryArgs & { server: string }> = {
  command: 'logout <server>',
  describe: 'forget the credentials stored for a registry',
  builder: (y: Argv<StoreArgs>) => registryOptions(y)
    .positional('server', { type: 'string', demandOption: true }) as unknown as Argv<RegistryArgs & { server: string }>,
  handler: async (argv) => {
    const result = await withRegistryBackend(argv, (b) => b.logout(String(argv.server)));
    if (argv.json) return printJson(result);
    process.stdout.write(result.removed ? `Removed login credentials for ${result.registry}\n` : `Not logged in to ${result.registry}\n`);
  },
};

async function readAll(stream: NodeJS.ReadStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** Reads one line from the terminal; with echo off for a password (raw mode, nothing written back). */
async function prompt(question: string, echo: boolean): Promise<string> {
  process.stderr.write(question);
  const stdin = process.stdin;
  if (!echo) stdin.setRawMode(true);
  stdin.resume();
  try {
    return await new Promise<string>((resolve, reject) => {
      let line = '';
      const onData = (chunk: Buffer) => {
        for (const ch of chunk.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            if (!echo) process.stderr.write('\n');
            resolve(line);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            reject(new StrataError('STRATA_BAD_OPTION', 'login: interrupted'));
            return;
          }
          if (ch === '\u007f') line = line.slice(0, -1);
          else line += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    if (!echo) stdin.setRawMode(false);
    stdin.pause();
  }
}
