import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QueueNames } from '../../../queues/names.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../../helpers/redis.js';

// A reconcile replica killed (SIGKILL) in the middle of a cycle: the other replica runs the next
// cycle soon, not after BullMQ's default 30 s lock plus its 30 s stalled check.
const PERIOD_S = 2;
const prefix = uniquePrefix('reconcile-crash');
const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-reconcile-crash-'));
const listHook = join(dir, 'list.sh');
// The list hook hangs while the marker file exists: the cycle that runs it stays in its orphan pass.
writeFileSync(listHook, '#!/bin/sh\nwhile [ -f "$HOOK_DIR/hang" ]; do touch "$HOOK_DIR/listing"; sleep 0.1; done\n');
chmodSync(listHook, 0o755);
const config = {
  redis: { url: REDIS_URL },
  vm_cycle_timeout: PERIOD_S,
  groups: [
    {
      name: 'g',
      provider: { type: 'command', spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'], list_cmd: [listHook], list_timeout: 120, env: { HOOK_DIR: dir } },
      check: { type: 'tcp', port: 22 },
      orphan_check_period: 1,
    },
  ],
};

let redis: Redis;
let queue: Queue;
const workers: WorkerProcess[] = [];

beforeAll(() => {
  redis = connect();
  queue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await queue.obliterate({ force: true }).catch(() => undefined);
  await queue.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
  rmSync(dir, { recursive: true, force: true });
});

describe('a reconcile replica killed mid-cycle', () => {
  it('is replaced by the next cycle of another replica within two cycle periods', { timeout: 60_000 }, async () => {
    const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
    writeFileSync(join(dir, 'hang'), '');
    const first = await startWorkerProcess('reconcile', env);
    workers.push(first);
    await waitFor(() => existsSync(join(dir, 'listing')), 20_000, 'a cycle stuck in its orphan pass');
    const second = await startWorkerProcess('reconcile', env);
    workers.push(second);
    // Only one cycle runs at a time: the second replica waits behind the stuck one.
    await first.kill();
    workers.splice(workers.indexOf(first), 1);
    const killedAt = Date.now();
    rmSync(join(dir, 'hang'));
    const done = await waitFor(
      async () => (await queue.getJobs(['completed'], 0, 20)).find((j) => (j.finishedOn ?? 0) > killedAt),
      40_000,
      'a cycle completed after the kill',
    );
    const recoveredMs = done.finishedOn! - killedAt;
    console.log(`reconcile crash: next cycle finished ${recoveredMs} ms after the kill (period ${PERIOD_S * 1000} ms)`);
    expect(recoveredMs).toBeLessThan(2 * PERIOD_S * 1000 + 1_500);
  });
});
