import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { CHAOS_SCALE, figuresTable, type Figures } from './figures.js';

// Global setup of `npm run test:chaos` (vitest.chaos.config.ts): gives the scenarios a dir for
// their figures, and prints the summary table once all have run.
declare module 'vitest' {
  export interface ProvidedContext {
    chaosFiguresDir: string;
  }
}

export default function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-chaos-figures-'));
  project.provide('chaosFiguresDir', dir);
  return () => {
    const file = join(dir, 'figures.ndjson');
    const rows: Figures[] = existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Figures) : [];
    rows.sort((a, b) => a.scenario.localeCompare(b.scenario));
    process.stdout.write(`\nChaos suite figures (\`CHAOS_SCALE=${CHAOS_SCALE} npm run test:chaos\`):\n\n${figuresTable(rows, CHAOS_SCALE)}\n\n`);
    rmSync(dir, { recursive: true, force: true });
  };
}
