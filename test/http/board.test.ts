import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALL_QUEUE_NAMES, QueueNames } from '../../queues/names.js';
import { createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// Bull Board at /admin/queues shows every vmpool queue; the config switch makes it read-only.
describe.each([false, true])('Bull Board (read_only_board: %s)', (readOnly) => {
  let kit: WebKit;
  let spawnQueue: Queue;

  beforeAll(async () => {
    kit = await createWebKit(`board-${readOnly}`, webTestConfig({ web: { read_only_board: readOnly } }));
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: kit.redis, prefix: kit.prefix });
    await spawnQueue.add('spawn', { group: 'base', spawnId: 'board-test-1' }, { jobId: 'spawn-board-test-1' });
  });
  afterAll(async () => {
    await spawnQueue?.close();
    await kit?.close();
  });

  it('serves the UI and lists every vmpool queue with its jobs', async () => {
    const ui = await kit.fetch('/admin/queues');
    expect(ui.status).toBe(200);
    expect(await ui.text()).toContain('<html');
    const res = await kit.fetch('/admin/queues/api/queues?activeQueue=vm-spawn&status=latest&page=1&jobsPerPage=10');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { queues: { name: string; readOnlyMode: boolean; jobs: { id: string; data: unknown }[] }[] };
    expect(body.queues.map((q) => q.name).sort()).toEqual([...ALL_QUEUE_NAMES].sort());
    for (const q of body.queues) expect(q.readOnlyMode).toBe(readOnly);
    const spawn = body.queues.find((q) => q.name === QueueNames.SPAWN)!;
    expect(spawn.jobs.map((j) => j.data)).toContainEqual({ group: 'base', spawnId: 'board-test-1' });
  });

  it(readOnly ? 'refuses to change jobs' : 'can change jobs', async () => {
    const res = await kit.fetch(`/admin/queues/api/queues/${QueueNames.SPAWN}/spawn-board-test-1/clean`, { method: 'PUT' });
    const job = await spawnQueue.getJob('spawn-board-test-1');
    if (readOnly) {
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).not.toBe(404); // the route exists; read-only mode refuses it
      expect(job).toBeDefined();
    } else {
      expect(res.status).toBe(204);
      expect(job).toBeUndefined();
    }
  });

  it('refuses a change that a browser marks as coming from another site', async () => {
    await spawnQueue.add('spawn', { group: 'base', spawnId: 'board-test-2' }, { jobId: 'spawn-board-test-2' });
    const path = `/admin/queues/api/queues/${QueueNames.SPAWN}/spawn-board-test-2/clean`;
    const crossSite: Record<string, string>[] = [{ origin: 'http://attacker.example' }, { 'sec-fetch-site': 'cross-site' }, { origin: 'null' }];
    for (const headers of crossSite) {
      const res = await kit.fetch(path, { method: 'PUT', headers });
      expect(res.status).toBe(403);
      expect(await spawnQueue.getJob('spawn-board-test-2')).toBeDefined();
    }
    const sameOrigin = await kit.fetch(path, { method: 'PUT', headers: { origin: kit.url.replace(/\/$/, ''), 'sec-fetch-site': 'same-origin' } });
    expect(sameOrigin.status).not.toBe(403);
  });
});
