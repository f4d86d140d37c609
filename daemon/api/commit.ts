/**
 * Diff, commit and export endpoints (Docker-like: GET /mounts/{id}/changes as /containers/{id}/changes,
 * POST /mounts/{id}/commit as /commit, POST /images/export as /images/get, but writing to a path on the daemon's
 * host, as /images/load reads one). See docs/commit-export.md.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ImageBackend } from '../../lib/images/service.js';
import type { CommitService } from '../../lib/images/commit-image.js';
import type { ProgressListener } from '../../lib/layers/types.js';
import { toErrorResponse } from './server.js';

/**
 * Runs a long operation; with `?progress=true` the answer is newline-delimited JSON: `{"Progress": …}` lines (at
 * most 10 a second), then `{"Result": …}` or `{"Error": {message, code}}` (the status is already sent by then).
 * Without it, the ordinary JSON answer with `status`.
 */
export async function withProgressStream<T>(request: FastifyRequest, reply: FastifyReply, status: number, work: (onProgress?: ProgressListener) => Promise<T>): Promise<unknown> {
  if ((request.query as { progress?: string } | undefined)?.progress !== 'true') return reply.code(status).send(await work(undefined));
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, { 'content-type': 'application/x-ndjson' });
  let last = 0;
  const onProgress: ProgressListener = (p) => {
    const now = Date.now();
    if (now - last < 100) return;
    last = now;
    raw.write(`${JSON.stringify({ Progress: p })}\n`);
  };
  try {
    const result = await work(onProgress);
    raw.end(`${JSON.stringify({ Result: result })}\n`);
  } catch (err) {
    const { status: code, body } = toErrorResponse(err);
    if (code >= 500) request.log.error({ err, url: request.url }, 'request failed');
    raw.end(`${JSON.stringify({ Error: body })}\n`);
  }
  return reply;
}

const idParam = { type: 'object', properties: { id: { type: 'string', minLength: 1, maxLength: 256 } }, required: ['id'] } as const;

export function registerCommitRoutes(app: FastifyInstance, commits: CommitService | undefined, backend: ImageBackend | undefined): void {
  if (commits !== undefined) {
    app.get('/mounts/:id/changes', { schema: { params: idParam } }, async (request) => commits.diff((request.params as { id: string }).id));
    app.post('/mounts/:id/commit', {
      schema: {
        params: idParam,
        body: {
          type: 'object',
          properties: {
            Ref: { type: 'string', minLength: 1, maxLength: 512 },
            Message: { type: 'string', maxLength: 4096 },
            Force: { type: 'boolean' },
            ChangeFree: { type: 'boolean' },
          },
          required: ['Ref'],
          additionalProperties: false,
        },
      },
    }, async (request, reply) => {
      const body = request.body as { Ref: string; Message?: string; Force?: boolean; ChangeFree?: boolean };
      const result = await commits.commit((request.params as { id: string }).id, body.Ref, { message: body.Message, force: body.Force, allowEmpty: body.ChangeFree });
      return reply.code(201).send(result);
    });
  }
  if (backend !== undefined) {
    app.post('/images/export', {
      schema: {
        body: {
          type: 'object',
          properties: {
            Refs: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 1024 } },
            Format: { type: 'string', enum: ['oci', 'docker'] },
            Output: { type: 'string', minLength: 2, maxLength: 4096, pattern: '^/' },
            Compression: { type: 'string', enum: ['gzip', 'zstd', 'none'] },
          },
          required: ['Refs', 'Format', 'Output'],
          additionalProperties: false,
        },
      },
    }, async (request, reply) => {
      const body = request.body as { Refs: string[]; Format: 'oci' | 'docker'; Output: string; Compression?: 'gzip' | 'zstd' | 'none' };
      return withProgressStream(request, reply, 201, (onProgress) =>
        backend.exportImages(body.Refs, { format: body.Format, output: body.Output, compression: body.Compression, onProgress }));
    });
  }
}
