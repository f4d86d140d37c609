/**
 * Registry endpoints, Docker-like: POST /images/pull, POST /images/push, POST /auth (login: checks the
 * credentials with the registry, then stores them 0600 in the daemon's state dir), POST /auth/logout.
 * Passwords arrive in request bodies over the control socket (root only) and are never logged: fastify's
 * request logging is off and errors carry only the registry's answer.
 */
import type { FastifyInstance } from 'fastify';
import type { ImageBackend } from '../../lib/images/service.js';

const ref = { type: 'string', minLength: 1, maxLength: 512 } as const;
const host = { type: 'string', minLength: 1, maxLength: 300 } as const;

export function registerRegistryRoutes(app: FastifyInstance, backend: ImageBackend): void {
  app.post('/images/pull', {
    schema: {
      body: {
        type: 'object',
        properties: { Ref: ref, Platform: { type: 'string', minLength: 3, maxLength: 64 } },
        required: ['Ref'],
        additionalProperties: false,
      },
    },
  }, async (request) => {
    const body = request.body as { Ref: string; Platform?: string };
    return backend.pullImage(body.Ref, { platform: body.Platform });
  });

  app.post('/images/push', {
    schema: {
      body: {
        type: 'object',
        properties: { Ref: ref, Dest: ref, ChunkSize: { type: 'integer', minimum: 1024, maximum: 2 ** 40 } },
        required: ['Ref'],
        additionalProperties: false,
      },
    },
  }, async (request) => {
    const body = request.body as { Ref: string; Dest?: string; ChunkSize?: number };
    return backend.pushImage(body.Ref, body.Dest, { chunkSize: body.ChunkSize });
  });

  app.post('/auth', {
    schema: {
      body: {
        type: 'object',
        properties: { ServerAddress: host, Username: { type: 'string', minLength: 1, maxLength: 256 }, Password: { type: 'string', minLength: 1, maxLength: 8192 } },
        required: ['ServerAddress', 'Username', 'Password'],
        additionalProperties: false,
      },
    },
  }, async (request) => {
    const body = request.body as { ServerAddress: string; Username: string; Password: string };
    return backend.login(body.ServerAddress, { username: body.Username, password: body.Password });
  });

  app.post('/auth/logout', {
    schema: { body: { type: 'object', properties: { ServerAddress: host }, required: ['ServerAddress'], additionalProperties: false } },
  }, async (request) => backend.logout((request.body as { ServerAddress: string }).ServerAddress));
}
