import { Queue } from 'bullmq';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { VmPoolClient } from '../../src/client/index.js';
import { createLogger } from '../../src/logger.js';
import { LeaseLost, VmStates } from '../../src/pool/types.js';
import { PoolStateWatch } from '../../src/runtime/poolStateWatch.js';
import { QueueNames } from '../../queues/names.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

// The pool's state marker and the scripts around it, on the shared Redis (which is never
// restarted: a restart is played by writing another run id into the marker).
let kit: PoolKit;
let terminateQueue: Queue;
const logger = createLogger('test-pool-state');
const fresh = { generation: '', epoch: 0 };

beforeAll(async () => {
  kit = await createPoolKit('pool-state');
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: kit.redis, prefix: kit.prefix });
});
afterAll(async () => {
  await terminateQueue.close();
  await kit.close();
});
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

/** Plays a Redis restart: the marker says it was verified on another run. */
const restart = () => kit.redis.hset(kit.keys.poolState, 'run_id', 'f'.repeat(40));
const req = (owner: string) => ({ groups: [0], owner, sandbox: `${owner}/p`, workerId: 'w' });

describe('checkPoolState', () => {
  it('creates the marker for a process that knew none, then bumps the epoch on each check', async () => {
    const created = await kit.vmm.checkPoolState(fresh);
    expect(created).toMatchObject({ status: 'created', epoch: 1 });
    const seen = { generation: (created as { generation: string }).generation, epoch: 1 };
    expect(await kit.vmm.checkPoolState(seen)).toEqual({ status: 'ok', ...seen, epoch: 2 });
    // Another process that just started takes the marker as it is.
    expect(await kit.vmm.checkPoolState(fresh)).toEqual({ status: 'ok', generation: seen.generation, epoch: 3 });
    expect((await kit.vmm.reader.poolState())?.runId).toMatch(/^[0-9a-f]{40}$/);
  });

  it('says lost, changed, regressed and restarted, changing nothing', async () => {
    const created = (await kit.vmm.checkPoolState(fresh)) as { generation: string; epoch: number };
    const seen = { generation: created.generation, epoch: 10 };
    expect(await kit.vmm.checkPoolState(seen)).toMatchObject({ status: 'regressed', epoch: 1 });
    expect(await kit.vmm.checkPoolState({ generation: 'another', epoch: 1 })).toMatchObject({ status: 'changed', generation: created.generation });
    await restart();
    expect(await kit.vmm.checkPoolState(seen)).toMatchObject({ status: 'restarted', epoch: 1 });
    await kit.redis.del(kit.keys.poolState);
    expect(await kit.vmm.checkPoolState(seen)).toEqual({ status: 'lost' });
    expect(await kit.vmm.reader.poolState()).toBeNull();
  });
});

describe('acquire while the state is not verified on this Redis run', () => {
  it('hands out nothing until a process verified the state, then serves', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const created = (await kit.vmm.checkPoolState(fresh)) as { generation: string; epoch: number };
    await restart();
    expect(await kit.vmm.tryAcquireVm(req('alice'))).toMatchObject({ status: 'none' });
    expect(await kit.vmm.verifyPoolState({ generation: created.generation, epoch: 0 })).toBeNull();
    expect(await kit.vmm.verifyPoolState({ generation: created.generation, epoch: created.epoch })).toEqual({ generation: created.generation, epoch: 2 });
    expect(await kit.vmm.tryAcquireVm(req('alice'))).toMatchObject({ status: 'acquired', vm: { vmName: 'a1' } });
  });

  it('serves a pool that has no marker yet, as before', async () => {
    await kit.addReady('a1', '10.0.0.1');
    expect(await kit.vmm.tryAcquireVm(req('alice'))).toMatchObject({ status: 'acquired' });
  });
});

describe('recoverPool', () => {
  it('terminates every VM not already terminating, marks the server start again and writes a new marker, once', async () => {
    await kit.addReady('r1', '10.0.0.1');
    await kit.addReady('r2', '10.0.0.2');
    await kit.vmm.addVmToPool('10.0.0.3', 'g1', 'base');
    const held = await kit.vmm.acquireVm(req('alice'));
    const created = (await kit.vmm.checkPoolState(fresh)) as { generation: string; epoch: number };
    const startBefore = await kit.vmm.reader.serverStartSeq();
    kit.clock.now = T0 + 9000;

    const seen = { generation: created.generation, epoch: created.epoch };
    const terminated = await kit.vmm.recoverPool(seen, { generation: 'next', epoch: 7 });
    expect(terminated?.sort()).toEqual(['g1', 'r1', 'r2']);
    for (const vm of await kit.vmm.getAllVms()) expect(vm.state).toBe(VmStates.TERMINATING);
    expect(await kit.vmm.reader.serverStartSeq()).toBeGreaterThan(startBefore!);
    expect(await kit.vmm.getServerStart()).toBe(T0 + 9000);
    expect(await kit.vmm.reader.poolState()).toMatchObject({ generation: 'next', epoch: 7, recoveredAt: T0 + 9000, sweepGeneration: 'next', swept: {} });
    const jobs = await terminateQueue.getJobs(['waiting', 'prioritized', 'delayed']);
    expect(jobs.filter((j) => j.data.reason === 'state_lost').map((j) => j.data.vmName).sort()).toEqual(['g1', 'r1', 'r2']);
    expect(held.vmName).toMatch(/^r/);

    // A second process that saw the same marker recovers nothing: the first did.
    expect(await kit.vmm.recoverPool(seen, { generation: 'other', epoch: 8 })).toBeNull();
    expect((await kit.vmm.reader.poolState())?.generation).toBe('next');
    await kit.vmm.markLossSwept('base', 'next');
    expect((await kit.vmm.reader.poolState())?.swept).toEqual({ base: 'next' });
  });

  it('a builder whose lease went with the state is told so at renew and release', async () => {
    await kit.addReady('b1', '10.0.0.1');
    const client = new VmPoolClient({ redis: kit.redis, prefix: kit.prefix, clock: () => kit.clock.now, logger });
    try {
      const vm = await kit.vmm.acquireVm(req('bob'));
      const record = await kit.vmm.getVmRecord(vm.vmName);
      const assignment = { vmName: vm.vmName, vmIp: vm.vmIp, group: 'base', leaseId: record.leaseId!, leaseExpiresAt: record.leaseExpiresAt!, requestedAt: T0 + 1000 };
      kit.clock.now = T0 + 2000;
      await kit.vmm.recoverPool(null, { generation: 'g', epoch: 1 });
      const err = await client.renew(assignment).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LeaseLost);
      expect(err).toMatchObject({ reason: 'state_lost', recoveredAt: T0 + 2000 });
      expect((err as Error).message).toMatch(/Redis lost or rolled back the pool's state .*acquire a new one/);
      expect(await client.release(assignment)).toBe(false);
    } finally {
      await client.close();
    }
  });
});

describe('PoolStateWatch', () => {
  const watch = () => new PoolStateWatch({ vmm: kit.vmm, redis: kit.redis, logger, intervalMs: 60_000 });

  it('recovers after the marker vanished, and another process adopts the new generation', async () => {
    await kit.addReady('w1', '10.0.0.1');
    const [a, b] = [watch(), watch()];
    expect(await a.check('test')).toBeNull();
    expect(await b.check('test')).toBeNull();
    await kit.redis.del(kit.keys.poolState);
    const recovered = await a.check('test');
    expect(recovered).toMatchObject({ kind: 'recovered', reason: 'lost', terminated: ['w1'] });
    expect(await b.check('test')).toEqual({ kind: 'adopted', generation: a.seen.generation });
    expect(await b.check('test')).toBeNull();
  });

  it('recovers when the epoch went back (an older snapshot), and checks shared while one runs', async () => {
    const w = watch();
    await w.check('test');
    await w.check('test');
    await kit.redis.hset(kit.keys.poolState, 'epoch', 1);
    const [first, second] = await Promise.all([w.check('test'), w.check('test')]);
    expect(first).toMatchObject({ kind: 'recovered', reason: 'regressed' });
    expect(second).toBe(first);
    expect(w.seen.epoch).toBeGreaterThan(2);
  });

  it('treats a restart of a Redis without AOF always as a loss', async () => {
    const persistence = await kit.redis.config('GET', 'appendfsync');
    const w = watch();
    await w.check('test');
    await restart();
    const event = await w.check('test');
    // The shared test Redis runs without appendfsync always; a run that has it verifies instead.
    if ((persistence as string[])[1] === 'always') expect(event).toMatchObject({ kind: 'verified' });
    else expect(event).toMatchObject({ kind: 'recovered', reason: 'unproven_restart' });
    expect(await kit.vmm.checkPoolState(w.seen)).toMatchObject({ status: 'ok' });
  });
});
