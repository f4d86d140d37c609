/**
 * The control API: HTTP/JSON on a Unix socket, shaped after Docker's Engine API (docs/api.md).
 *
 * Access control is the socket's mode (0660, root and the optional socket group): the kernel refuses everyone else
 * at connect(2), before any request is read. Errors are always JSON `{ "message", "code" }` with the status from
 * lib/errors.ts; malformed requests get 4xx and never disturb the daemon.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdir, unlink } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyError } from 'fastify';
import { STRATA_ERRORS, StrataError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { MountService } from '../../lib/mounts/service.js';
import type { AttachmentRequest } from '../../lib/mounts/attachments.js';
import type { DaemonConfig } from '../config.js';
import type { ImageBackend } from '../../lib/images/service.js';
import type { VolumeService } from '../../lib/volumes/service.js';
import { registerImageRoutes } from './images.js';
import type { StoreMaintenance } from '../../lib/store/maintenance.js';
import { registerSystemRoutes } from './system.js';
import { registerVolumeRoutes } from './volumes.js';
import { registerRegistryRoutes } from './registry.js';
import { registerCommitRoutes } from './commit.js';
import type { CommitService } from '../../lib/images/commit-image.js';

const execFileAsync = promisify(execFile);

export const API_VERSION = '1.0';

export interface ApiContext {
  config: DaemonConfig;
  mounts: MountService;
  /** The layer and image store, when this daemon hosts one. */
  images?: ImageBackend;
  /** mount diff and commit, when this daemon hosts the store. */
  commits?: CommitService;
  /** fsck, lost+found and retained uppers, when this daemon hosts the store. */
  maintenance?: StoreMaintenance;
  /** Named volumes, when this daemon hosts them. */
  volumes?: VolumeService;
  version: string;
  startedAt: string;
}

interface ErrorBody {
  message: string;
  code: string;
}

/** Maps anything thrown by a handler or by fastify itself to a status and a stable code. */
export function toErrorResponse(err: unknown): { status: number; body: ErrorBody } {
  if (err instanceof StrataError) return { status: err.status, body: { message: err.message, code: err.code } };
  const e = err as Partial<FastifyError> & { code?: string; message?: string };
  if (e.validation !== undefined) {
    return { status: 400, body: { message: `invalid request: ${e.message}`, code: 'STRATA_BAD_REQUEST' } };
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return { status: e.statusCode, body: { message: e.message ?? 'bad request', code: 'STRATA_BAD_REQUEST' } };
  }
  if (typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    return { status: 500, body: { message: e.message ?? e.code, code: e.code } };
  }
  return { status: 500, body: { message: e.message ?? String(err), code: 'STRATA_INTERNAL' } };
}

const nameParam = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1, maxLength: 256 } },
  required: ['id'],
} as const;

const forceQuery = {
  type: 'object',
  properties: { force: { type: 'boolean', default: false }, keepUpper: { type: 'boolean', default: false } },
  additionalProperties: false,
} as const;

export function buildApi(context: ApiContext, logger: Logger): FastifyInstance {
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, allErrors: false } },
  });

  app.setErrorHandler((err, request, reply) => {
    const { status, body } = toErrorResponse(err);
    if (status >= 500) request.log.error({ err, url: request.url }, 'request failed');
    else request.log.debug({ code: body.code, url: request.url }, 'request refused');
    void reply.code(status).type('application/json').send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ message: `no such endpoint: ${request.method} ${request.url}`, code: 'STRATA_NOT_FOUND' });
  });

  app.get('/_ping', async (_req, reply) => reply.type('text/plain').send('OK'));

  app.get('/version', async () => ({
    Version: context.version,
    ApiVersion: API_VERSION,
    Os: os.platform(),
    Arch: os.arch(),
    KernelVersion: os.release(),
    NodeVersion: process.version,
  }));

  app.get('/info', async () => {
    const mounts = context.mounts.list();
    const reclaimable = context.maintenance === undefined ? {} : await context.maintenance.reclaimable();
    return {
      ServerVersion: context.version,
      Pid: process.pid,
      StartedAt: context.startedAt,
      Root: context.config.root,
      Socket: context.config.socket,
      MountProgram: context.config.mountProgram,
      SocketGroup: context.config.socketGroup,
      MountTimeoutMs: context.config.mountTimeoutMs,
      HelperExitGraceMs: context.config.helperExitGraceMs,
      AllowedTargets: context.config.allowedTargets,
      HealthTimeoutMs: context.config.healthTimeoutMs,
      Mounts: mounts.length,
      MountsRunning: mounts.filter((m) => m.State.Running).length,
      NCPU: os.cpus().length,
      // Data no record describes, kept until `strata system prune`; and why the store refuses changes, if it does.
      ...reclaimable,
      StoreError: context.maintenance?.storeError() ?? null,
    };
  });

  app.get('/mounts/json', async () => context.mounts.list());

  app.post('/mounts/create', {
    schema: {
      body: {
        type: 'object',
        properties: {
          Name: { type: 'string', minLength: 1, maxLength: 128 },
          Target: { type: 'string', minLength: 1, maxLength: 4096 },
          Sources: { type: 'array', minItems: 1, maxItems: 500, items: { type: 'string', minLength: 1, maxLength: 4096 } },
          Mounts: {
            type: 'array',
            maxItems: 100,
            items: {
              type: 'object',
              properties: {
                Type: { type: 'string', enum: ['volume', 'bind', 'tmpfs'] },
                Source: { type: 'string', maxLength: 4096 },
                Target: { type: 'string', minLength: 1, maxLength: 4096 },
                ReadOnly: { type: 'boolean' },
                NoCopy: { type: 'boolean' },
                TmpfsSize: { type: 'integer', minimum: 1 },
                TmpfsMode: { type: 'integer', minimum: 0, maximum: 4095 },
              },
              required: ['Type', 'Target'],
              additionalProperties: false,
            },
          },
          Suid: { type: 'boolean' },
          Dev: { type: 'boolean' },
        },
        required: ['Target', 'Sources'],
        additionalProperties: false,
      },
    },
  }, async (request, reply) => {
    const body = request.body as { Name?: string; Target: string; Sources: string[]; Mounts?: AttachmentRequest[]; Suid?: boolean; Dev?: boolean };
    const view = await context.mounts.create({ name: body.Name, target: body.Target, sources: body.Sources, mounts: body.Mounts, suid: body.Suid, dev: body.Dev });
    return reply.code(201).send(view);
  });

  app.get('/mounts/:id/json', { schema: { params: nameParam } }, async (request) => {
    return context.mounts.inspect((request.params as { id: string }).id);
  });

  app.post('/mounts/:id/start', { schema: { params: nameParam } }, async (request) => {
    return context.mounts.start((request.params as { id: string }).id);
  });

  app.post('/mounts/:id/stop', { schema: { params: nameParam, querystring: forceQuery } }, async (request) => {
    const query = request.query as { force: boolean };
    return context.mounts.unmount((request.params as { id: string }).id, { force: query.force });
  });

  app.delete('/mounts/:id', { schema: { params: nameParam, querystring: forceQuery } }, async (request) => {
    const query = request.query as { force: boolean; keepUpper: boolean };
    return context.mounts.remove((request.params as { id: string }).id, { force: query.force, keepUpper: query.keepUpper });
  });

  if (context.images !== undefined) {
    registerImageRoutes(app, context.images);
    registerRegistryRoutes(app, context.images);
  }
  if (context.maintenance !== undefined) registerSystemRoutes(app, context.maintenance);
  if (context.volumes !== undefined) registerVolumeRoutes(app, context.volumes);
  registerCommitRoutes(app, context.commits, context.images);

  return app;
}

/** True if something accepts connections on `socketPath`. */
function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
}

async function groupId(name: string): Promise<number | undefined> {
  try {
    const { stdout } = await execFileAsync('getent', ['group', name]);
    const gid = Number(stdout.split(':')[2]);
    return Number.isInteger(gid) ? gid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Binds the API to the socket with mode 0660 from the first instant (umask), then hands it to the socket group
 * (without that group, the socket's group stays root's).
 * A socket file left by a dead daemon is replaced; one that still answers belongs to a live daemon and is an error.
 */
/**
 * Serves the API on `config.socket`. With `activatedFd` (socket activation) the socket unit owns the socket, its
 * mode and group: the API only accepts on the listening fd systemd passed.
 */
export async function listenOnSocket(app: FastifyInstance, config: DaemonConfig, logger: Logger, activatedFd?: number): Promise<void> {
  if (activatedFd !== undefined) {
    await app.ready();
    await new Promise<void>((resolve, reject) => {
      app.server.once('error', reject);
      app.server.listen({ fd: activatedFd }, () => {
        app.server.off('error', reject);
        resolve();
      });
    });
    logger.info({ socket: config.socket, fd: activatedFd }, 'control API listening on the socket systemd passed');
    return;
  }
  await mkdir(path.dirname(config.socket), { recursive: true, mode: 0o755 });
  const existing = await lstat(config.socket).catch(() => undefined);
  if (existing !== undefined) {
    if (!existing.isSocket()) throw new StrataError('STRATA_BAD_OPTION', `socket path ${config.socket} exists and is not a socket; remove it or choose another --socket`);
    if (await socketAnswers(config.socket)) {
      throw new StrataError('STRATA_LOCKED', `another daemon already serves ${config.socket}; stop it or choose another --socket`);
    }
    await unlink(config.socket);
  }
  const previousUmask = process.umask(0o117);
  try {
    await app.listen({ path: config.socket });
  } finally {
    process.umask(previousUmask);
  }
  let gid: number | undefined;
  if (config.socketGroup !== '') {
    gid = await groupId(config.socketGroup);
    if (gid === undefined) logger.info({ group: config.socketGroup }, 'socket group does not exist; the socket is for root only');
  }
  if (gid !== undefined) await chown(config.socket, 0, gid);
  await chmod(config.socket, 0o660);
  logger.info({ socket: config.socket, gid }, 'control API listening');
}
