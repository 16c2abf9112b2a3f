import { execFile } from 'node:child_process';
import { Queue } from 'bullmq';
import { afterAll, describe, expect, it } from 'vitest';
import { QueueNames } from '../../queues/names.js';
import { ROOT, freePort, nodeArgsFor, startWorkerProcess, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { REDIS_URL, closePool, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// Every workers/*.ts entry honours `--config FILE` and refuses any other argument (exit 2).
const TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile', 'web'] as const;
const prefix = uniquePrefix('entries');
// VMPOOL_CONFIG names another file: the flag must win over it.
const decoy = writeConfigFile({ redis: { url: REDIS_URL, prefix: `${prefix}-decoy` }, groups: [{ name: 'decoy' }] });
const baseEnv = { ...process.env, LOG_LEVEL: 'info', VMPOOL_CONFIG: decoy, VMPOOL_PREFIX: '' };

function run(type: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...nodeArgsFor(`workers/${type}.ts`), ...args], { cwd: ROOT, env: baseEnv, timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

describe('workers/*.ts arguments', () => {
  const workers: WorkerProcess[] = [];
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop(8_000)));
    const redis = connect();
    await deleteKeysWithPrefix(redis, `${prefix}-decoy`);
    await closePool(prefix, redis, [], new Queue(QueueNames.RECONCILE, { connection: redis, prefix }));
  });

  it.each(TYPES)('%s refuses an unknown argument with exit 2 and a usage line', async (type) => {
    const res = await run(type, ['--bogus']);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('unknown argument "--bogus"');
    expect(res.stderr).toContain(`usage: workers/${type}.js [--config FILE]`);
    expect((await run(type, ['--config'])).stderr).toContain('--config needs a file');
  });

  it.each(TYPES)('%s reads the file given by --config (an invalid one stops it with exit 2 naming the file)', async (type) => {
    const bad = writeConfigFile({ groups: [{ name: 'g', max_vm_total: -1 }] });
    const res = await run(type, ['--config', bad]);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain(`invalid vmpool config in ${bad}`);
    expect(res.stderr).toContain('groups.0.max_vm_total');
  });

  it('each entry runs with the config of --config (its prefix, its web port), not VMPOOL_CONFIG', async () => {
    const port = await freePort();
    const file = writeConfigFile({ redis: { url: REDIS_URL, prefix }, web: { port }, groups: [{ name: 'flagged' }] });
    const env = { VMPOOL_CONFIG: decoy, VMPOOL_PREFIX: '' };
    for (const type of TYPES) {
      const ready = type === 'web' ? '"web listening"' : '"worker started"';
      const args = type === 'acquire' ? [`--config=${file}`] : ['--config', file];
      workers.push(await startWorkerProcess(type, env, 20_000, { args, ready }));
    }
    for (const w of workers) {
      expect(w.lines.some((l) => l.includes(`"config":"${file}"`)), w.lines.join('\n')).toBe(true);
      if (w.type !== 'web') expect(w.lines.some((l) => l.includes(`"prefix":"${prefix}"`)), w.lines.join('\n')).toBe(true);
    }
    const res = await fetch(`http://127.0.0.1:${port}/api/v1/groups`);
    expect(res.status).toBe(200);
    expect(JSON.stringify(await res.json())).toContain('flagged');
    for (const w of workers) expect(await w.stop(8_000)).toBe(0);
  }, 90_000);
});
