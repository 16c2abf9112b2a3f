/**
 * docs/performance.md's tables are generated (`npm run docs`) from the saved bench report: this
 * fails when the page's block is not the render of docs/performance/bench-results.json.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { mergeBenchReports, parseBenchReport, renderBenchMarkdown, type BenchReport, type BenchRow } from '../../bench/lib/report.js';
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

  describe('a partial run merged into the saved report (npm run bench -- --only PARTS --merge FILE)', () => {
    const machine = { cores: 2, cpuModel: 'AMD EPYC', memoryBytes: 25_276_182_528, node: 'v20.20.2', redis: '7.0.15' };
    const row = (part: string, measured: string, source?: string): BenchRow => ({ part, figure: 'f', target: '-', measured, result: 'info', ...(source ? { source } : {}) });
    const order = ['acquire', 'check-on-acquire', 'pool'];
    // Saved before rows had a source: the parts are told by their rows' names.
    const base: BenchReport = {
      date: '2026-12-07T03:04:41.970Z',
      machine,
      seconds: 500,
      timings: { acquire: 30, pool: 60 },
      errors: [],
      rows: [row('raw BullMQ no-op job', '1 ms'), row('acquire with check_on_acquire tcp', 'old check'), row('direct acquire, 10 VMs', '0.2 ms')],
    };
    const later = (date: string, measured: string): BenchReport => ({
      date,
      machine,
      seconds: 42,
      timings: { 'check-on-acquire': 42 },
      errors: [],
      rows: [row('check at hand-over (check_on_acquire)', measured, 'check-on-acquire')],
      note: 'Only some parts ran (--only); not run: acquire, pool.',
    });

    it("replaces the re-run part's rows in place, keeps the others, and says when the part was measured", () => {
      const merged = mergeBenchReports(base, later('2026-12-07T04:25:00.000Z', 'new check'), ['check-on-acquire'], order);
      expect(merged.rows.map((r) => [r.measured, r.source])).toEqual([
        ['1 ms', 'acquire'],
        ['new check', 'check-on-acquire'],
        ['0.2 ms', 'pool'],
      ]);
      expect(merged).toMatchObject({ date: base.date, seconds: 500, timings: { acquire: 30, pool: 60 } });
      expect(merged.note).toBeUndefined();
      const text = renderBenchMarkdown(merged).split('\n');
      expect(text[0]).toBe('Measured 2026-12-07 03:04 UTC on 2 cores, CPU AMD EPYC, 23.5 GiB memory, Node v20.20.2, Redis 7.0.15; 500 s in all (acquire 30 s, pool 60 s).');
      expect(text[2]).toBe(
        '> The rows of the part check-on-acquire were measured 2026-12-07 04:25 UTC on the same machine, 42 s (`npm run bench -- --only check-on-acquire --merge FILE`).',
      );
      // Saved and read back, the same report.
      expect(parseBenchReport(JSON.stringify(merged))).toEqual(merged);
    });

    it('merged again, the part has one merge line, the latest', () => {
      const once = mergeBenchReports(base, later('2026-12-07T04:25:00.000Z', 'first'), ['check-on-acquire'], order);
      const twice = mergeBenchReports(once, later('2026-12-07T05:00:00.000Z', 'second'), ['check-on-acquire'], order);
      expect(twice.rows.map((r) => r.measured)).toEqual(['1 ms', 'second', '0.2 ms']);
      expect(twice.merges).toEqual([{ date: '2026-12-07T05:00:00.000Z', parts: ['check-on-acquire'], machine, seconds: 42 }]);
    });

    it('names another machine, and refuses rows whose part it cannot tell', () => {
      const elsewhere = { ...later('2026-12-07T04:25:00.000Z', 'x'), machine: { ...machine, cores: 8 } };
      const text = renderBenchMarkdown(mergeBenchReports(base, elsewhere, ['check-on-acquire'], order));
      expect(text).toContain('were measured 2026-12-07 04:25 UTC on 8 cores, CPU AMD EPYC');
      const edited = { ...base, rows: [...base.rows, row('hand-written', '?')] };
      expect(() => mergeBenchReports(edited, later('2026-12-07T04:25:00.000Z', 'x'), ['check-on-acquire'], order)).toThrow(/cannot tell which bench part measured the row "hand-written"/);
      expect(() => mergeBenchReports(base, later('2026-12-07T04:25:00.000Z', 'x'), ['nope'], order)).toThrow(/unknown bench part nope/);
    });
  });
});
