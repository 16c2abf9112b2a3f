import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { REDIS_URL } from '../helpers/redis.js';
import { VmStates } from '../../src/pool/types.js';
import { createPoolKit, testConfig, T0, type PoolKit } from './fixtures/kit.js';

/**
 * Separate OS processes, each with several connections, race acquireVm on a small pool. If acquire
 * were not atomic (read the index, then write in another round trip), VMs would be handed out twice.
 */
const racerScript = fileURLToPath(new URL('./fixtures/racer.ts', import.meta.url));
const PROCESSES = 4;
const RACERS_PER_PROCESS = 10;

let kit: PoolKit;
const config = testConfig();
beforeAll(async () => {
  kit = await createPoolKit('pool-race', config);
});
afterAll(async () => kit.close());
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

interface RaceResult {
  racer: string;
  vmName: string | null;
  error: string | null;
}

function runRacer(id: string, goKey: string, env: Record<string, string>): { ready: Promise<void>; done: Promise<RaceResult[]> } {
  const child = spawn(process.execPath, ['--import', 'tsx', racerScript], {
    env: {
      ...process.env,
      REDIS_URL,
      PREFIX: kit.prefix,
      CONFIG: JSON.stringify(config),
      RACERS: String(RACERS_PER_PROCESS),
      OWNER_PREFIX: 'owner',
      GO_KEY: goKey,
      ID: id,
      LOG_LEVEL: 'silent',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  let onReady: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('ready\n')) onReady();
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<RaceResult[]>((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 25_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('['));
      if (code !== 0 || !line) reject(new Error(`racer ${id} exited ${code}: ${err}`));
      else resolve(JSON.parse(line) as RaceResult[]);
    });
  });
  return { ready, done };
}

async function race(env: Record<string, string> = {}): Promise<RaceResult[]> {
  const goKey = `${kit.prefix}:go`;
  const children = Array.from({ length: PROCESSES }, (_, i) => runRacer(`p${i}`, goKey, env));
  await Promise.all(children.map((c) => c.ready));
  await kit.redis.set(goKey, '1');
  return (await Promise.all(children.map((c) => c.done))).flat();
}

describe('acquireVm under a race between processes', () => {
  it('hands each of 5 VMs to exactly one of 40 racers', async () => {
    const names = ['r1', 'r2', 'r3', 'r4', 'r5'];
    for (const n of names) await kit.addReady(n, '10.4.0.1');
    const results = await race();
    expect(results).toHaveLength(PROCESSES * RACERS_PER_PROCESS);
    const winners = results.filter((r) => r.vmName !== null);
    expect(winners).toHaveLength(5);
    expect(new Set(winners.map((w) => w.vmName)).size).toBe(5);
    expect(results.filter((r) => r.vmName === null).every((r) => r.error === 'NoVmAvailable')).toBe(true);
    // The pool agrees with what the racers were told.
    for (const w of winners) {
      const vm = await kit.vmm.getVmByName(w.vmName!);
      expect(vm).toMatchObject({ state: VmStates.IN_USE, usedByWorker: w.racer, taskId: `task-${w.racer}`, owner: `owner-${w.racer}` });
    }
  });

  it('respects max_vm_per_user when one owner races for many clean VMs', async () => {
    const limit = config.groups![0]!.max_vm_per_user!;
    for (let i = 0; i < 10; i++) await kit.addReady(`u${i}`, '10.4.0.2');
    const results = await race({ SAME_OWNER: '1' });
    const winners = results.filter((r) => r.vmName !== null);
    expect(winners).toHaveLength(limit);
    expect(new Set(winners.map((w) => w.vmName)).size).toBe(limit);
    expect(await kit.vmm.countOwnerVms('shared-owner', 'base')).toBe(limit);
    expect(await kit.vmm.getVmsByGroupAndStates('base', [VmStates.READY])).toHaveLength(10 - limit);
  });
});
