/**
 * Store maintenance endpoints: GET /system/fsck (report), POST /system/fsck?repair=true, GET /system/reclaimable
 * (lost+found and retained uppers) and POST /system/prune?lost=true&retained=true (deletes them; the only way
 * Strata ever deletes them).
 */
import type { FastifyInstance } from 'fastify';
import { StrataError } from '../../lib/errors.js';
import type { StoreMaintenance } from '../../lib/store/maintenance.js';

const pruneQuery = {
  type: 'object',
  properties: {
    lost: { type: 'boolean', default: false },
    retained: { type: 'boolean', default: false },
    name: { type: 'array', items: { type: 'string', minLength: 1, maxLength: 512 } },
  },
  additionalProperties: false,
} as const;

export function registerSystemRoutes(app: FastifyInstance, maintenance: StoreMaintenance): void {
  app.get('/system/fsck', async () => maintenance.fsck(false));
  app.post('/system/fsck', {
    schema: { querystring: { type: 'object', properties: { repair: { type: 'boolean', default: false } }, additionalProperties: false } },
  }, async (request) => maintenance.fsck((request.query as { repair: boolean }).repair));
  app.get('/system/reclaimable', async () => maintenance.reclaimable());
  app.post('/system/prune', { schema: { querystring: pruneQuery } }, async (request) => {
    const query = request.query as { lost: boolean; retained: boolean; name?: string[] };
    if (!query.lost && !query.retained) throw new StrataError('STRATA_BAD_OPTION', 'say what to prune: lost=true (lost+found) and/or retained=true (kept uppers)');
    return maintenance.prune({ lost: query.lost, retained: query.retained, only: query.name });
  });
}
