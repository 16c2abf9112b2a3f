/**
 * docs/performance.md's tables, from the report `npm run bench -- --save
 * docs/performance/bench-results.json` wrote: rendered by the bench's own renderer, so the page
 * shows what `npm run bench -- --markdown` printed for that run.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseBenchReport, renderBenchMarkdown } from '../../bench/lib/report.js';
import { replaceGeneratedBlock, type DocGenerator } from './blocks.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BENCH_RESULTS = 'docs/performance/bench-results.json';
export const BENCH_BLOCK = 'bench';

/** The generated block's content, from the saved report. */
export function renderBenchBlock(): string {
  return renderBenchMarkdown(parseBenchReport(readFileSync(join(root, BENCH_RESULTS), 'utf8')));
}

export const performancePage: DocGenerator = {
  page: 'docs/performance.md',
  render(current) {
    if (current === null) throw new Error('docs/performance.md is missing: its prose is written by hand');
    return replaceGeneratedBlock(current, BENCH_BLOCK, renderBenchBlock());
  },
};
