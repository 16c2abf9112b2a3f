// `npm run docs:reference`: writes the pages and files generated from the code's schemas.
// test/docs/generated.test.ts fails when a committed one differs from what these produce.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONFIG_SCHEMA_FILE } from '../../src/config/index.js';
import { configReferencePage, configSchemaFile } from './config.js';
import { httpReferencePage } from './http.js';

/** Each generated file, by its path from the repository root, and what makes its text. */
export const referenceFiles: { path: string; generate: () => string }[] = [
  { path: 'docs/reference/config.md', generate: configReferencePage },
  { path: CONFIG_SCHEMA_FILE, generate: configSchemaFile },
  { path: 'docs/reference/http.md', generate: httpReferencePage },
];

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const file of referenceFiles) {
    writeFileSync(join(ROOT, file.path), file.generate());
    console.log(`wrote ${file.path}`);
  }
}
