/**
 * docs/performance.md's tables are generated (`npm run docs`) from the saved bench report: this
 * fails when the page's block is not the render of docs/performance/bench-results.json.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseBenchReport, renderBenchMarkdown } from '../../bench/lib/report.js';
import { generatedBlock, replaceGeneratedBlock } from '../../scripts/docs/blocks.js';
import { BENCH_BLOCK, BENCH_RESULTS, performancePage, renderBenchBlock } from '../../scripts/docs/performance.js';

const page = () => readFileSync(new URL('../../docs/performance.md', import.meta.url), 'utf8');
const saved = () => parseBenchReport(readFileSync(new URL(`../../${BENCH_RESULTS}`, import.meta.url), 'utf8'));

describe('docs/performance.md', () => {
  it('shows the render of the saved bench report (run npm run docs when this fails)', () => {
    expect(generatedBlock(page(), BENCH_BLOCK)).toBe(renderBenchBlock());
  });

  it('is what the generator writes, so npm run docs would change nothing', async () => {
    expect(await performancePage.render(page())).toBe(page());
  });

  it('heads the table with the date and the machine, and has a row per saved row', () => {
    const report = saved();
    const block = generatedBlock(page(), BENCH_BLOCK);
    expect(block.split('\n')[0]).toMatch(/^Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC on .*cores.*CPU .*memory.*Node .*Redis /);
    expect(report.rows.length).toBeGreaterThan(0);
    for (const row of report.rows) expect(block).toContain(row.measured.replace(/\|/g, '\\|'));
  });

  it('notices a page whose figures differ from the saved report', () => {
    const report = saved();
    const changed = { ...report, rows: report.rows.map((r, i) => (i === 0 ? { ...r, measured: `${r.measured} (edited)` } : r)) };
    const stale = replaceGeneratedBlock(page(), BENCH_BLOCK, renderBenchMarkdown(changed));
    expect(generatedBlock(stale, BENCH_BLOCK)).not.toBe(renderBenchBlock());
    expect(() => generatedBlock('no markers here', BENCH_BLOCK)).toThrow(/generated:bench start/);
  });

  it('renders what a run records: machine, timings, note and errors', () => {
    const text = renderBenchMarkdown({
      date: '2026-12-06T22:33:04.553Z',
      machine: { cores: 2, cpuModel: 'AMD EPYC', memoryBytes: 25_276_182_528, node: 'v20.20.2', redis: '7.0.15' },
      seconds: 9.67,
      timings: { pool: 9.648 },
      errors: ['pool.ts exited 1'],
      note: 'only the pool part',
      rows: [{ part: 'direct acquire, 10 VMs', figure: 'clean p50 / p99', target: 'p50 <= 0.500 ms', measured: '0.229 ms / 2.801 ms', result: 'PASS' }],
    });
    expect(text.split('\n')).toEqual([
      'Measured 2026-12-06 22:33 UTC on 2 cores, CPU AMD EPYC, 23.5 GiB memory, Node v20.20.2, Redis 7.0.15; 10 s in all (pool 10 s).',
      '',
      '> only the pool part',
      '',
      '| part                   |          figure |          target |            measured | result |',
      '|------------------------|-----------------|-----------------|---------------------|--------|',
      '| direct acquire, 10 VMs | clean p50 / p99 | p50 <= 0.500 ms | 0.229 ms / 2.801 ms |   PASS |',
      '',
      'error: pool.ts exited 1',
    ]);
  });
});
