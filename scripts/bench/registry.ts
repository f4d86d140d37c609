/**
 * Every workload the benchmark knows, in table order. To add workloads, export a `Workload[]` from a module of
 * its own (see workloads.ts for the interface and workloads-metadata.ts for an example) and append it here.
 */
import { METADATA_WORKLOADS } from './workloads-metadata.js';
import { CORE_WORKLOADS, type Workload } from './workloads.js';

export const WORKLOADS: readonly Workload[] = [...CORE_WORKLOADS, ...METADATA_WORKLOADS];

export const WORKLOAD_NAMES: readonly string[] = WORKLOADS.map((w) => w.name);

for (const w of WORKLOADS) {
  if (WORKLOADS.filter((o) => o.name === w.name).length > 1) throw new Error(`two workloads are named ${w.name}`);
}
