// The pages and files generated from the code's schemas (written by `npm run docs`).
// test/docs/generated.test.ts fails when a committed one differs from what these produce.
import { CONFIG_SCHEMA_FILE } from '../../src/config/index.js';
import type { DocGenerator } from './blocks.js';
import { configReferencePage, configSchemaFile } from './config.js';
import { httpReferencePage } from './http.js';
import { securityPage } from './security.js';

export const referenceGenerators: DocGenerator[] = [
  { page: 'docs/reference/config.md', render: configReferencePage },
  { page: CONFIG_SCHEMA_FILE, render: configSchemaFile },
  { page: 'docs/reference/http.md', render: httpReferencePage },
  { page: 'docs/security.md', render: securityPage }, // the table of scopes, from src/http/scopes.ts
];
