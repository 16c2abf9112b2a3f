import { Queue, QueueEvents } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestGroupsError, requestGroupIds } from '../../src/acquire/requestGroups.js';
import { runCli } from '../../src/cli/program.js';
import { parseConfig } from '../../src/config/index.js';
import { acquireJobOptions } from '../../queues/acquire.js';
import { REDIS_URL, connect } from '../helpers/redis.js';
import { writeConfigFile } from '../helpers/processes.js';
import { createWebKit, type WebKit } from '../http/fixtures.js';

const input = {
  redis: { url: REDIS_URL },
  groups: [
    { name: 'small', archs: ['x86_64'], tags: ['kvm'] },
    { name: 'big', archs: ['x86_64'], tags: ['kvm', 'large'] },
    { name: 'arm', archs: ['aarch64'], tags: ['large'] },
  ],
};

describe('tags', () => {
  const groups = parseConfig(input, {}).groups;

  it('match groups that list every tag, in config order, within groups or arch, or alone', () => {
    expect(requestGroupIds(groups, { tags: ['large'] })).toEqual(['big', 'arm']);
    expect(requestGroupIds(groups, { tags: ['kvm', 'large'] })).toEqual(['big']);
    expect(requestGroupIds(groups, { arch: 'x86_64', tags: ['kvm'] })).toEqual(['small', 'big']);
    expect(requestGroupIds(groups, { groups: [2, 'big', 0], tags: ['large'] })).toEqual(['arm', 'big']);
    expect(() => requestGroupIds(groups, { tags: ['gpu'] })).toThrow(/unknown tag "gpu"/);
    expect(() => requestGroupIds(groups, { arch: 'aarch64', tags: ['kvm'] })).toThrow(RequestGroupsError);
  });

  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit('acquire-tags', input);
    await kit.startAcquireWorker();
    await kit.addReady('t-small', '10.6.0.1', 0);
    await kit.addReady('t-big', '10.6.0.2', 1);
  });
  afterAll(async () => kit?.close());

  it('POST /acquire serves from a matching group, and an unknown tag is a 400 that enqueues nothing', async () => {
    const res = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'tag-a', sandbox: 's', tags: ['large'], arch: 'x86_64', timeoutMs: 5_000 } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { vmName: string }).vmName).toBe('t-big');
    const bad = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'tag-a', sandbox: 's', tags: ['gpu'] } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toContain('unknown tag "gpu"');
    const both = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'tag-a', sandbox: 's', groups: [0], arch: 'x86_64' } });
    expect(both.status).toBe(400);
  });

  it('an acquire job with an unknown tag fails at once as an invalid request, never a silent wait', async () => {
    const redis = connect();
    const queue = new Queue('vm-acquire', { connection: redis, prefix: kit.prefix });
    const events = new QueueEvents('vm-acquire', { connection: connect({ maxRetriesPerRequest: null }), prefix: kit.prefix });
    try {
      await events.waitUntilReady();
      const job = await queue.add('acquire', { owner: 'tag-b', sandbox: 's', tags: ['gpu'], timeoutMs: 60_000 }, { ...acquireJobOptions, jobId: 'tags-unknown' });
      const started = Date.now();
      await expect(job.waitUntilFinished(events, 20_000)).rejects.toThrow(/unknown tag "gpu"/);
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await events.close();
      await queue.close();
      await redis.quit();
    }
  });

  it('vmpool acquire --tag', async () => {
    const file = writeConfigFile(input);
    let out = '';
    const io = { out: (t: string) => (out += t), err: (t: string) => (out += t), env: { VMPOOL_PREFIX: kit.prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' } };
    expect(await runCli(['--config', file, 'acquire', '--owner', 'tag-c', '--sandbox', 's', '--tag', 'kvm', '--timeout', '5', '--json'], io), out).toBe(0);
    expect(JSON.parse(out).vmName).toBe('t-small');
    out = '';
    expect(await runCli(['--config', file, 'acquire', '--owner', 'tag-c', '--sandbox', 's', '--tag', 'gpu'], io)).toBe(2);
    expect(out).toContain('unknown tag "gpu"');
  });
});
