import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openApiDocument } from '../../src/http/openapi.js';
import { ROOT } from '../helpers/processes.js';
import { createWebKit, type WebKit } from './fixtures.js';

describe('HTTP details', () => {
  let kit: WebKit;

  beforeAll(async () => {
    kit = await createWebKit('http-details');
    await kit.startAcquireWorker();
    await kit.addReady('d1', '10.9.5.1', 0);
    await kit.addReady('d2', '10.9.5.2', 1);
  });
  afterAll(async () => kit?.close());

  it('answers a body that is too large with 413', async () => {
    const res = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'a', sandbox: 'x'.repeat(100_000), groups: [0] } });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: string }).error).toBe('payload_too_large');
  });

  it('answers a wrong method with 405 and Allow', async () => {
    const cases: [string, string, string][] = [
      ['GET', '/api/v1/acquire', 'POST'],
      ['PUT', '/api/v1/vms/d1', 'GET, HEAD'],
      ['GET', '/api/v1/vms/d1/hold', 'POST, DELETE'],
      ['POST', '/metrics', 'GET, HEAD'],
      ['DELETE', '/', 'GET, HEAD'],
    ];
    for (const [method, path, allow] of cases) {
      const res = await kit.fetch(path, { method, headers: { 'content-type': 'application/json' } });
      expect(res.status, `${method} ${path}`).toBe(405);
      expect(res.headers.get('allow'), `${method} ${path}`).toBe(allow);
      expect(((await res.json()) as { error: string }).error).toBe('method_not_allowed');
    }
    expect((await kit.fetch('/api/v1/nothing-here')).status).toBe(404);
  });

  it('takes group names in POST /acquire as the CLI and GET /vms do', async () => {
    const res = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'names', sandbox: 'names/p', groups: ['arm'], timeoutMs: 5_000 } });
    expect(res.status).toBe(200);
    const assignment = (await res.json()) as { vmName: string; group: string; requestedAt: number };
    expect(assignment.vmName).toBe('d2');
    expect(assignment.group).toBe('arm');
    const unknown = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'names', sandbox: 'names/p', groups: ['sparc'] } });
    expect(unknown.status).toBe(400);
    expect(((await unknown.json()) as { message: string }).message).toContain('unknown group "sparc"');
  });

  it('serves an icon, and the pool page shows leases and local times', async () => {
    const icon = await kit.fetch('/favicon.ico');
    expect(icon.status).toBe(200);
    expect(icon.headers.get('content-type')).toContain('image/svg+xml');
    const page = await (await kit.fetch('/')).text();
    expect(page).toContain('<th>Lease expires</th>');
    // d2 is in use (the test above): its lease expiry is a <time> the script localizes.
    expect(page).toMatch(/<tr data-vm="d2" data-state="in_use">.*<td class="lease"><time datetime="[^"]+" data-ms="\d+"/s);
    expect(page).toContain('rel="icon"');
  });

  it('every operation has a unique operationId, and Redocly lints the document with no warnings', () => {
    const ids = Object.values(openApiDocument.paths).flatMap((ops) => Object.values(ops as Record<string, { operationId?: string }>).map((op) => op.operationId));
    expect(ids.every((id) => typeof id === 'string' && id.length > 0)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-openapi-'));
    try {
      const file = join(dir, 'openapi.json');
      writeFileSync(file, JSON.stringify(openApiDocument));
      const out = execFileSync(join(ROOT, 'node_modules', '.bin', 'redocly'), ['lint', file, '--format=stylish'], { cwd: dir, encoding: 'utf8', env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' } });
      expect(out).not.toMatch(/warning|error/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
