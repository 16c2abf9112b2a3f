// `npm run docs:reference`: writes the pages and files generated from the code's schemas.
// test/docs/generated.test.ts fails when a committed one differs from what these produce.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONFIG_SCHEMA_FILE } from '../../src/config/index.js';
import { configReferencePage, configSchemaFile } from './config.js';
import { httpReferencePage } from './http.js';

/** A generated file (the shape of scripts/docs/generate.ts's generators): its path from the repository root, and its text. */
export interface ReferenceGenerator {
  page: string;
  render(current: string | null): string;
}

export const referenceGenerators: ReferenceGenerator[] = [
  { page: 'docs/reference/config.md', render: configReferencePage },
  { page: CONFIG_SCHEMA_FILE, render: configSchemaFile },
  { page: 'docs/reference/http.md', render: httpReferencePage },
];

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const g of referenceGenerators) {
    writeFileSync(join(ROOT, g.page), g.render(null));
    console.log(`wrote ${g.page}`);
  }
}
