/**
 * Regenerates every generated docs page (`npm run docs`), or with --check only says which are out
 * of date (exit 1). One line per generator in the list below.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { DocGenerator } from './blocks.js';
import { performancePage } from './performance.js';
import { referenceGenerators } from './reference.js';

export const generators: DocGenerator[] = [
  performancePage, // docs/performance.md from docs/performance/bench-results.json
  ...referenceGenerators, // the config and HTTP references and the config's JSON Schema, from the code's schemas
];

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The pages whose text differs from their generated text; written unless `check`. */
export async function generate(check: boolean): Promise<string[]> {
  const stale: string[] = [];
  for (const g of generators) {
    const file = join(root, g.page);
    const current = existsSync(file) ? readFileSync(file, 'utf8') : null;
    const next = await g.render(current);
    if (next === current) continue;
    stale.push(g.page);
    if (!check) writeFileSync(file, next);
  }
  return stale;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const check = process.argv.includes('--check');
  const stale = await generate(check);
  if (check && stale.length) {
    console.error(`out of date (run npm run docs): ${stale.join(', ')}`);
    process.exitCode = 1;
  } else console.log(stale.length ? `regenerated: ${stale.join(', ')}` : 'every generated page is current');
}
