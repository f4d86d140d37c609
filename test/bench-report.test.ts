/**
 * The benchmark's arithmetic and table (scripts/bench/report.ts): medians, the unit conversion for MB/s
 * workloads, strata's time ratios, and how a failed cell shows.
 */
import t from 'tap';
import { formatTable, median, summarize, type WorkloadReport } from '../scripts/bench/report.js';

t.test('median of odd and even sample counts, and of none', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(median([]), undefined);
});

t.test('summarize fills medians, MB/s values and time ratios (above 1: strata slower)', async (t) => {
  const report: WorkloadReport = {
    name: 'seq-read',
    description: 'dd',
    cache: 'cold',
    unit: 'MB/s',
    bytes: 1_000_000_000,
    results: {
      kernel: { samples: [1, 2, 3], serverCpuSamples: [] },
      'fuse-overlayfs': { samples: [2, 2, 9], serverCpuSamples: [0.5, 0.7, 0.6] },
      strata: { samples: [4, 5, 4], serverCpuSamples: [1, 1.2, 1.1] },
    },
    ratios: {},
  };
  summarize(report);
  t.equal(report.results.kernel?.medianSeconds, 2);
  t.equal(report.results.kernel?.value, 500, '1 GB in a median 2 s is 500 MB/s');
  t.equal(report.results.kernel?.serverCpuMedianSeconds, undefined, 'the kernel has no server');
  t.equal(report.results.strata?.serverCpuMedianSeconds, 1.1);
  t.same(report.ratios, { 'strata/kernel': 2, 'strata/fuse-overlayfs': 2 });
});

t.test('a failed cell shows its code and gets no ratio', async (t) => {
  const report: WorkloadReport = {
    name: 'untar-small',
    description: 'tar -x',
    cache: 'warm',
    unit: 'seconds',
    results: {
      kernel: { samples: [0.5], serverCpuSamples: [] },
      strata: { samples: [], serverCpuSamples: [], error: { code: 'STRATA_BENCH_FAILED', message: 'files in the upper is 3' } },
    },
    ratios: {},
  };
  summarize(report);
  t.same(report.ratios, {});
  const table = formatTable([report], ['kernel', 'strata']).split('\n');
  t.match(table[0] ?? '', /workload\s+cache\s+kernel\s+strata\s+strata\/kernel \(time\)/);
  t.match(table[2] ?? '', /^untar-small\s+warm\s+0\.500 s\s+ERROR STRATA_BENCH_FAILED\s+-$/);
});
