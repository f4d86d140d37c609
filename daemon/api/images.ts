/**
 * Image and layer endpoints (Docker-like: /images/json, /images/{name}/json, DELETE /images/{name}, plus
 * /images/load and the /layers family). They serve the daemon's in-process layer store through the same
 * ImageBackend interface the CLI uses locally, so remote and local behave alike. Paths in bodies are paths on the
 * daemon's host (the CLI runs on the same machine).
 */
import type { FastifyInstance } from 'fastify';
import type { ImageBackend } from '../../lib/images/service.js';
import { withProgressStream } from './commit.js';

const refParam = { type: 'object', properties: { ref: { type: 'string', minLength: 1, maxLength: 1024 } }, required: ['ref'] } as const;
const absolutePath = { type: 'string', minLength: 2, maxLength: 4096, pattern: '^/' } as const;

export function registerImageRoutes(app: FastifyInstance, backend: ImageBackend): void {
  const ref = (params: unknown) => (params as { ref: string }).ref;

  app.get('/images/json', async () => backend.listImages());
  app.get('/images/:ref/json', { schema: { params: refParam } }, async (request) => backend.inspectImage(ref(request.params)));
  app.delete('/images/:ref', { schema: { params: refParam } }, async (request) => backend.removeImage(ref(request.params)));
  app.post('/images/prune', async () => backend.pruneImages());
  app.post('/images/load', {
    schema: {
      body: {
        type: 'object',
        properties: { Path: absolutePath, Name: { type: 'string', minLength: 1, maxLength: 512 } },
        required: ['Path'],
        additionalProperties: false,
      },
    },
  }, async (request, reply) => {
    const body = request.body as { Path: string; Name?: string };
    return withProgressStream(request, reply, 201, (onProgress) => backend.importImage(body.Path, { name: body.Name, onProgress }));
  });

  app.get('/layers/json', async () => backend.listLayers());
  app.get('/layers/:ref/json', { schema: { params: refParam } }, async (request) => backend.inspectLayer(ref(request.params)));
  app.delete('/layers/:ref', { schema: { params: refParam } }, async (request) => backend.removeLayer(ref(request.params)));
  app.post('/layers/prune', async () => backend.pruneLayers());
  app.post('/layers/import', {
    schema: {
      body: {
        type: 'object',
        properties: { Path: absolutePath, Parent: { type: 'string', minLength: 1, maxLength: 256 } },
        required: ['Path'],
        additionalProperties: false,
      },
    },
  }, async (request, reply) => {
    const body = request.body as { Path: string; Parent?: string };
    return reply.code(201).send(await backend.importLayer(body.Path, { parent: body.Parent }));
  });
}
