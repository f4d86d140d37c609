/**
 * The benchmark's arithmetic and table (scripts/bench/report.ts): medians, the unit conversion for MB/s
 * workloads, strata's time ratios, and how a failed cell shows.
 */
import t from 'tap';
import { parseCandidate } from '../scripts/bench/mounts.js';
import { formatRatioTable, formatRssTable, formatTable, median, ratioPairs, summarize, type WorkloadReport } from '../scripts/bench/report.js';

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
  t.match(table[0] ?? '', /workload\s+cache\s+kernel\s+strata$/);
  t.match(table[2] ?? '', /^untar-small\s+warm\s+0\.500 s\s+ERROR STRATA_BENCH_FAILED$/);
  t.match(formatRatioTable([report], ['kernel', 'strata']).split('\n')[2] ?? '', /^untar-small\s+-$/, 'no ratio for a failed cell');
});

t.test('several strata candidates: ratios over each non-strata candidate and of strata over its variants, with per-round ranges', async (t) => {
  const names = ['kernel', 'fuse-overlayfs', 'strata', 'strata-fuse-native'];
  t.same(ratioPairs(names), [
    ['strata', 'kernel'], ['strata', 'fuse-overlayfs'], ['strata-fuse-native', 'kernel'], ['strata-fuse-native', 'fuse-overlayfs'], ['strata', 'strata-fuse-native'],
  ]);
  const report: WorkloadReport = {
    name: 'stat-pass2',
    description: 'stat',
    cache: 'warm',
    unit: 'seconds',
    results: {
      kernel: { samples: [1, 1, 2], serverCpuSamples: [] },
      'fuse-overlayfs': { samples: [2, 2, 2], serverCpuSamples: [1, 1, 1], rssPeakKiBSamples: [2048, 4096, 3072] },
      strata: { samples: [3, 2, 4], serverCpuSamples: [2, 2, 2], rssPeakKiBSamples: [51200, 52224, 50176] },
      'strata-fuse-native': { samples: [6, 4, 8], serverCpuSamples: [3, 3, 3], rssPeakKiBSamples: [61440, 61440, 61440] },
    },
    ratios: {},
  };
  summarize(report, names);
  t.equal(report.ratios['strata/kernel'], 3);
  t.same(report.ratioRanges?.['strata/kernel'], { min: 2, max: 3 }, 'per-round ratios 3, 2, 2');
  t.equal(report.ratios['strata/strata-fuse-native'], 0.5);
  t.same(report.ratioRanges?.['strata/strata-fuse-native'], { min: 0.5, max: 0.5 });
  t.equal(report.results.strata?.rssPeakMaxKiB, 52224, 'the highest peak of the runs');
  const values = formatTable([report], names).split('\n');
  t.match(values[2] ?? '', /^stat-pass2\s+warm\s+1\.000 s \(1\.000-2\.000\)\s+2\.000 s \(2\.000-2\.000\)\s+3\.000 s \(2\.000-4\.000\)\s+6\.000 s \(4\.000-8\.000\)$/, 'median and min-max per cell');
  const ratios = formatRatioTable([report], names).split('\n');
  t.match(ratios[0] ?? '', /workload\s+strata\/kernel\s+strata\/fuse-overlayfs\s+strata-fuse-native\/kernel\s+strata-fuse-native\/fuse-overlayfs\s+strata\/strata-fuse-native/);
  t.match(ratios[2] ?? '', /^stat-pass2\s+3\.00x \(2\.00-3\.00\)\s+1\.50x \(1\.00-2\.00\)/);
  const rss = formatRssTable([report], names).split('\n');
  t.match(rss[2] ?? '', /^stat-pass2\s+n\/a\s+4\.0 MiB\s+51 MiB\s+60 MiB$/);
});

t.test('candidates: the plain kinds, the aliases and strata+OPTIONS', async (t) => {
  t.same(parseCandidate('kernel'), { name: 'kernel', kind: 'kernel', strataOptions: '' });
  t.same(parseCandidate('strata-fuse-native'), { name: 'strata-fuse-native', kind: 'strata', strataOptions: 'transport=fuse-native' });
  t.same(parseCandidate('strata+entry_timeout=1'), { name: 'strata+entry_timeout=1', kind: 'strata', strataOptions: 'entry_timeout=1' });
  t.equal(parseCandidate('strata+'), undefined);
  t.equal(parseCandidate('zfs'), undefined);
});
