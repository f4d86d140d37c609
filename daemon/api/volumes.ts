/**
 * Volume endpoints, after Docker's Engine API: GET /volumes, POST /volumes/create, GET /volumes/{name},
 * DELETE /volumes/{name}, POST /volumes/prune. Filters come as Docker's `filters` query parameter, a JSON object
 * of key -> [values] (or key -> {value: true}).
 */
import type { FastifyInstance } from 'fastify';
import { StrataError } from '../../lib/errors.js';
import type { VolumeFilters, VolumeService } from '../../lib/volumes/service.js';

const nameParam = { type: 'object', properties: { name: { type: 'string', minLength: 1, maxLength: 256 } }, required: ['name'] } as const;
const stringMap = { type: 'object', additionalProperties: { type: 'string', maxLength: 4096 }, maxProperties: 256 } as const;

/** Docker's filters parameter: `{"label":["a=b"]}` or `{"label":{"a=b":true}}`. */
export function parseFilters(text: string | undefined): VolumeFilters {
  if (text === undefined || text === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new StrataError('STRATA_BAD_REQUEST', `filters is not JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new StrataError('STRATA_BAD_REQUEST', 'filters must be a JSON object of key -> [values]');
  const filters: VolumeFilters = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (Array.isArray(value) && value.every((v) => typeof v === 'string')) filters[key] = value;
    else if (typeof value === 'object' && value !== null) filters[key] = Object.entries(value).filter(([, on]) => on === true).map(([v]) => v);
    else throw new StrataError('STRATA_BAD_REQUEST', `filter "${key}" must be a list of strings`);
  }
  return filters;
}

export function registerVolumeRoutes(app: FastifyInstance, volumes: VolumeService): void {
  const name = (params: unknown) => (params as { name: string }).name;
  const filtersQuery = { type: 'object', properties: { filters: { type: 'string', maxLength: 65536 } }, additionalProperties: false } as const;

  app.get('/volumes', { schema: { querystring: filtersQuery } }, async (request) => ({
    Volumes: volumes.list(parseFilters((request.query as { filters?: string }).filters)),
    Warnings: [],
  }));

  app.post('/volumes/create', {
    schema: {
      body: {
        type: 'object',
        properties: {
          Name: { type: 'string', maxLength: 256 },
          Driver: { type: 'string', maxLength: 64 },
          Labels: stringMap,
          DriverOpts: stringMap,
        },
        additionalProperties: false,
      },
    },
  }, async (request, reply) => reply.code(201).send(await volumes.create((request.body ?? {}) as Parameters<VolumeService['create']>[0])));

  app.get('/volumes/:name', {
    schema: { params: nameParam, querystring: { type: 'object', properties: { size: { type: 'boolean', default: false } }, additionalProperties: false } },
  }, async (request) => volumes.inspect(name(request.params), { size: (request.query as { size: boolean }).size }));

  app.delete('/volumes/:name', {
    schema: { params: nameParam, querystring: { type: 'object', properties: { force: { type: 'boolean', default: false } }, additionalProperties: false } },
  }, async (request) => volumes.remove(name(request.params), { force: (request.query as { force: boolean }).force }));

  app.post('/volumes/prune', { schema: { querystring: filtersQuery } }, async (request) => volumes.prune(parseFilters((request.query as { filters?: string }).filters)));
}
