import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { referenceGenerators } from '../../scripts/docs/reference.js';
import { openApiDocument } from '../../src/http/openapi.js';

// The reference pages and the config's JSON Schema are generated from the code; a committed copy
// that differs is out of date: run `npm run docs`.

const ROOT = join(import.meta.dirname, '..', '..');

describe('generated reference files', () => {
  it('lists the config reference, the HTTP reference, the security page\'s table of scopes and the config JSON Schema', () => {
    expect(referenceGenerators.map((g) => g.page).sort()).toEqual(['docs/reference/config.md', 'docs/reference/http.md', 'docs/security.md', 'schema/vmpool.config.schema.json']);
  });

  it.each(referenceGenerators.map((g) => [g.page, g] as const))('%s is up to date (npm run docs)', async (page, g) => {
    const committed = readFileSync(join(ROOT, page), 'utf8');
    expect(committed === (await g.render(committed)), `${page} is out of date: run npm run docs`).toBe(true);
  });

  it('the config reference names every config key of the schema', () => {
    const page = readFileSync(join(ROOT, 'docs/reference/config.md'), 'utf8');
    for (const key of ['redis.url', 'redis.sentinel.name', 'web.auth.tokens[].scopes', 'groups[].max_vm_total', 'groups[].provider.spawn_cmd', 'groups[].check.known_hosts', 'vm_cycle_timeout']) {
      expect(page).toContain(`| \`${key}\` |`);
    }
  });

  it('the HTTP reference has a section per operation of the OpenAPI document', () => {
    const page = readFileSync(join(ROOT, 'docs/reference/http.md'), 'utf8');
    const sections = (page.match(/^### (GET|POST|PUT|PATCH|DELETE) \S+$/gm) ?? []).sort();
    const operations = Object.entries(openApiDocument.paths as Record<string, Record<string, unknown>>)
      .flatMap(([path, item]) => Object.keys(item).filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m)).map((m) => `### ${m.toUpperCase()} ${path}`))
      .sort();
    expect(operations.length).toBeGreaterThanOrEqual(20);
    expect(sections).toEqual(operations);
    expect(page).toContain('### WaitReason');
  });
});
