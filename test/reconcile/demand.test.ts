import { Queue, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { demandByGroup, queuedDemandRequest, queuedSetDemand } from '../../src/reconcile/demand.js';
import { setDemandMember, setJobIdOfDemandMember } from '../../src/pool/acquireLine.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { acquireJobOptions, type AcquireRequestData } from '../../queues/acquire.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, uniquePrefix, poolKeys } from '../helpers/redis.js';

const T0 = 1_750_000_000_000;
const S = 1000;

const groups = [{ name: 'x86', archs: ['x86_64'] }, { name: 'x86-spare', archs: ['x86_64'] }, { name: 'arm', archs: ['aarch64'] }];
const names = groups.map((g) => g.name);

describe('demandByGroup', () => {
  it('counts each request once, for its first group only', () => {
    expect(
      demandByGroup(
        [
          { jobId: 'a', groups: ['x86'] },
          { jobId: 'b', groups: ['x86-spare', 'x86'] },
          { jobId: 'a', groups: ['x86'] },
          { jobId: 'c', groups: ['x86', 'x86-spare', 'arm'] },
          { jobId: 'd', groups: [] },
          { jobId: 'e', groups: ['gone'] },
        ],
        names,
      ),
    ).toEqual([2, 1, 0]);
  });

  it("counts an owner's requests in a group only up to its room there (max_vm_per_user less its VMs)", () => {
    const flood = Array.from({ length: 40 }, (_, i) => ({ jobId: `f${i}`, owner: 'flood', groups: ['x86'] }));
    const rooms: Record<string, Record<string, number>> = { flood: { x86: 2, 'x86-spare': 1 }, bound: { x86: 0, 'x86-spare': 3 } };
    const room = (g: string, owner: string) => rooms[owner]?.[g] ?? 0;
    // 40 requests of an owner with room 2 are 2; another owner's request still counts; no owner: unlimited.
    expect(demandByGroup([...flood, { jobId: 'x', owner: 'other', groups: ['x86'] }, { jobId: 'y', groups: ['x86'] }], names.slice(0, 2), undefined, (g, o) => (o === 'other' ? 1 : room(g, o)))).toEqual([4, 0]);
    // An owner whose VMs use all its room adds nothing; a route counts the room per group.
    expect(
      demandByGroup(
        [...flood, { jobId: 'b1', owner: 'bound', groups: ['x86', 'x86-spare'] }, { jobId: 'b2', owner: 'bound', groups: ['x86', 'x86-spare'] }],
        names.slice(0, 2),
        (r) => r.groups,
        room,
      ),
    ).toEqual([2, 2]);
    // Without rooms, every request counts.
    expect(demandByGroup(flood, names.slice(0, 2))).toEqual([40, 0]);
  });
});

describe('queuedSetDemand', () => {
  const job = (data: unknown, timestamp = T0) => ({ id: 'set-o+r1', data, timestamp });

  it("is one request per VM of the set, named by the set's demand member, with the VM's groups; strict with strictGroup", () => {
    const data = { owner: 'o', sandbox: 's', vms: [{ groups: ['arm'] }, { arch: 'x86_64' }] };
    expect(queuedSetDemand(job(data), groups, T0)).toEqual([
      { jobId: 'set|set-o+r1|1', owner: 'o', groups: ['arm'] },
      { jobId: 'set|set-o+r1|2', owner: 'o', groups: ['x86', 'x86-spare'] },
    ]);
    expect(queuedSetDemand(job({ ...data, strictGroup: true }), groups, T0).map((r) => r.strict)).toEqual([true, true]);
    // Counted for each VM's first group: 2 in x86 would need two VMs there.
    expect(demandByGroup(queuedSetDemand(job(data), groups, T0), names)).toEqual([1, 0, 1]);
  });

  it('is nothing for an invalid payload, an unknown group, or a passed deadline', () => {
    expect(queuedSetDemand(job({ owner: 'o', sandbox: 's', vms: [] }), groups, T0)).toEqual([]);
    expect(queuedSetDemand(job({ owner: 'o', sandbox: 's', vms: [{ groups: ['nosuch'] }] }), groups, T0)).toEqual([]);
    expect(queuedSetDemand(job({ owner: 'o', sandbox: 's', vms: [{ groups: ['arm'] }], timeoutMs: 10 }), groups, T0 + 10)).toEqual([]);
  });

  it("reads a set's job id back from its demand member (job ids never hold '|': they are encoded)", () => {
    expect(setJobIdOfDemandMember(setDemandMember('set-o+r1', 12))).toBe('set-o+r1');
    expect(setJobIdOfDemandMember('acquire-o+t1')).toBeNull();
    expect(setJobIdOfDemandMember('set|')).toBeNull();
  });
});

describe('queuedDemandRequest', () => {
  const job = (data: unknown, timestamp = T0) => ({ id: 'acq-1', data, timestamp });

  it('maps groups as given (duplicates dropped) and an arch to the groups listing it, in config order', () => {
    expect(queuedDemandRequest(job({ owner: 'o', sandbox: 's', groups: [2, 'x86', 2] }), groups, T0)).toEqual({ jobId: 'acq-1', owner: 'o', groups: ['arm', 'x86'] });
    expect(queuedDemandRequest(job({ owner: 'o', sandbox: 's', arch: 'x86_64' }), groups, T0)).toEqual({ jobId: 'acq-1', owner: 'o', groups: ['x86', 'x86-spare'] });
  });

  it('ignores invalid payloads, unknown groups and arches', () => {
    expect(queuedDemandRequest(job({ owner: 'o' }), groups, T0)).toBeNull();
    expect(queuedDemandRequest(job({ owner: 'o', sandbox: 's', groups: [3] }), groups, T0)).toBeNull();
    expect(queuedDemandRequest(job({ owner: 'o', sandbox: 's', arch: 'ppc64le' }), groups, T0)).toBeNull();
  });

  it('ignores a request whose deadline (enqueued + timeoutMs) has come: 1 ms before counts, at it does not', () => {
    const data = { owner: 'o', sandbox: 's', groups: [0], timeoutMs: 5000 };
    expect(queuedDemandRequest(job(data), groups, T0 + 4999)).not.toBeNull();
    expect(queuedDemandRequest(job(data), groups, T0 + 5000)).toBeNull();
    // Without timeoutMs, the default (10 minutes) applies.
    const noTimeout = { owner: 'o', sandbox: 's', groups: [0] };
    expect(queuedDemandRequest(job(noTimeout), groups, T0 + 600 * S - 1)).not.toBeNull();
    expect(queuedDemandRequest(job(noTimeout), groups, T0 + 600 * S)).toBeNull();
  });
});

// Against the real Redis, with NO acquire worker: the requests stay queued in vm-acquire.
const config: ConfigInput = {
  groups: [
    { name: 'x86', archs: ['x86_64'], max_vm_total: 3, max_spawn_processes: 3, vm_spawn_min_interval: 0 },
    { name: 'x86-spare', archs: ['x86_64'], max_vm_total: 3, max_spawn_processes: 3, vm_spawn_min_interval: 0 },
    { name: 'arm', archs: ['aarch64'], max_vm_total: 2, max_spawn_processes: 1, vm_spawn_min_interval: 0 },
  ],
};

const prefix = uniquePrefix('demand');
const keys = poolKeys(prefix);
let redis: Redis;
let vmm: VmManager;
let master: VmMaster;
let acquireQueue: Queue;
let spawnQueue: Queue;
const clock = { now: T0 };
let seq = 0;

beforeAll(() => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix, clock: () => clock.now });
  master = new VmMaster(vmm);
  acquireQueue = new Queue(QueueNames.ACQUIRE, { connection: redis, prefix });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
});

beforeEach(async () => {
  await deleteKeysWithPrefix(redis, prefix);
  clock.now = T0;
});

afterAll(async () => {
  await acquireQueue.close();
  await spawnQueue.close();
  await deleteKeysWithPrefix(redis, prefix);
  await vmm.close();
  await redis.quit();
});

/** Adds an acquire request as a builder does (enqueued at `timestamp`, by the injected clock). */
async function request(data: Partial<AcquireRequestData>, opts: { priority?: number; timestamp?: number } = {}): Promise<Job> {
  seq += 1;
  return acquireQueue.add(
    'acquire',
    { owner: `o${seq}`, sandbox: 's', ...data },
    { ...acquireJobOptions, jobId: `acq-${seq}`, timestamp: opts.timestamp ?? T0, ...(opts.priority ? { priority: opts.priority } : {}) },
  );
}

/** Puts a request's job in the line of `groups`, as the acquire processor does when nothing fits (no VM in the pool). */
async function joinLine(job: Job, groups: number[]): Promise<void> {
  const { owner, sandbox } = job.data as AcquireRequestData;
  const attempt = await vmm.tryAcquireVm(
    { owner, sandbox, groups, workerId: 'w' },
    { member: acquireWaiterMember(job.timestamp, job.id!), jobId: job.id!, priority: 0, deadline: T0 + 60 * S },
  );
  expect(attempt.status).toBe('none');
}

async function spawnsByGroup(): Promise<number[]> {
  const jobs = await spawnQueue.getJobs(['waiting', 'delayed', 'active', 'prioritized']);
  const out = [0, 0, 0];
  for (const j of jobs) out[names.indexOf((j.data as { group: string }).group)]! += 1;
  return out;
}

describe('demand from queued acquire requests (no acquire worker running)', () => {
  it('startSpawnIfRequired spawns for requests still in the vm-acquire queue, up to the limits', async () => {
    for (let i = 0; i < 3; i++) await request({ groups: [0] });
    await request({ groups: [0] }, { priority: 5 });
    await request({ arch: 'x86_64' });
    await request({ arch: 'aarch64' });
    await request({ arch: 'aarch64' }, { priority: 1 });
    expect(await acquireQueue.getJobCounts('waiting', 'prioritized', 'active')).toMatchObject({ waiting: 5, prioritized: 2, active: 0 });

    const snapshot = await master.readSnapshot();
    // The arch request counts for its first group (x86), not for x86-spare as well.
    expect(snapshot.groups.map((g) => g.demand)).toEqual([5, 0, 2]);
    const actions = await master.startSpawnIfRequired(snapshot);
    expect(actions.filter((a) => a.type === 'spawn')).toHaveLength(4);
    // x86: max_vm_total 3 of 5 wanted; arm: max_spawn_processes 1 of 2 wanted; x86-spare: none.
    expect(await spawnsByGroup()).toEqual([3, 0, 1]);
    expect((await vmm.getSpawnsInFlight('x86')).length).toBe(3);
  });

  it('does not count expired, invalid or unknown-group requests', async () => {
    await request({ groups: [2], timeoutMs: 5000 }, { timestamp: T0 - 5000 });
    await request({ groups: [9] });
    await acquireQueue.add('acquire', { owner: 'o', sandbox: 's', groups: [2], extra: true }, { jobId: 'acq-invalid', timestamp: T0 });
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([0, 0, 0]);
    expect(await master.startSpawnIfRequired()).toEqual([]);
    expect(await spawnsByGroup()).toEqual([0, 0, 0]);

    // One ms younger, the same request still counts.
    await request({ groups: [2], timeoutMs: 5000 }, { timestamp: T0 - 4999 });
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([0, 0, 1]);
  });

  it('counts a request in the line and back in the queue (a stalled acquire) once, and one in several lines for its first group', async () => {
    const stalled = await request({ groups: [2] });
    await joinLine(stalled, [2]);
    // Waits in the lines of groups 0 and 1 (and is queued again), but asked for group 1 first.
    const multi = await request({ groups: [1, 0] });
    await joinLine(multi, [0, 1]);
    const inLineOnly = await request({ groups: [0] });
    await acquireQueue.remove(inLineOnly.id!);
    await joinLine(inLineOnly, [0]);
    // A request that left the queue (removed job) but still waits in two lines: config order.
    const gone = await request({ groups: [0, 2] });
    await acquireQueue.remove(gone.id!);
    await joinLine(gone, [0, 2]);
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([2, 1, 1]);
  });

  it("counts an owner's requests, queued and in the line, only up to max_vm_per_user less the VMs bound to it", async () => {
    // max_vm_per_user is 4 (the default): 40 requests of one owner are a demand of 4.
    for (let i = 0; i < 30; i++) await request({ owner: 'flood', groups: [0] });
    for (let i = 0; i < 10; i++) await joinLine(await request({ owner: 'flood', groups: [0] }), [0]);
    await request({ owner: 'other', groups: [0] });
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([5, 0, 0]);
    // Three VMs bound to the flooding owner leave it room for one.
    await redis.hset(keys.ownerVms('x86'), 'flood', 3);
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([2, 0, 0]);
    await redis.hset(keys.ownerVms('x86'), 'flood', 4);
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([1, 0, 0]);
    // Its VMs are per group: group 1's room is whole.
    for (let i = 0; i < 6; i++) await request({ owner: 'flood', groups: [1] });
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([1, 4, 0]);
  });
});

describe('demand of VM sets against their owner\'s room', () => {
  /** An acquire-set job as a builder enqueues it (not yet taken by an acquire worker). */
  async function setRequest(owner: string, groups: number[][], jobId: string): Promise<Job> {
    return acquireQueue.add('acquire-set', { owner, sandbox: `${owner}/sb`, vms: groups.map((g) => ({ groups: g })) }, { ...acquireJobOptions, jobId, timestamp: T0 });
  }

  it("counts a set's VMs, queued or waiting in the line, only up to the room its owner has left in each group", async () => {
    // 'busy' has 3 of its 4 VMs of x86 (max_vm_per_user 4): room for 1; 'idle' has room for 4.
    await redis.hset(keys.ownerVms('x86'), 'busy', '3');
    const queued = await setRequest('busy', [[0], [0], [0]], 'set-busy-queued');
    expect(queued.id).toBe('set-busy-queued');
    await setRequest('idle', [[0], [0]], 'set-idle-queued');
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([1 + 2, 0, 0]);

    // The same owner's set waiting in the line (as the acquire processor leaves it): its items
    // share the owner's one VM of room with the queued set's.
    const waiting = await setRequest('busy', [[0], [2]], 'set-busy-line');
    const attempt = await vmm.tryAcquireVmSet(
      { owner: 'busy', sandbox: 'busy/sb', workerId: 'w', items: [{ groups: [0] }, { groups: [2] }], jobId: waiting.id! },
      { waiter: { member: acquireWaiterMember(T0, waiting.id!), jobId: waiting.id!, priority: 0, deadline: T0 + 60 * S } },
    );
    expect(attempt.status).toBe('none');
    await acquireQueue.remove(waiting.id!);
    expect(await redis.zrange(keys.demand('arm'), '0', '-1')).toEqual([setDemandMember(waiting.id!, 2)]);
    // x86: still busy's one (of its two sets' four VMs there) and idle's two; arm: busy has room.
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([1 + 2, 0, 1]);

    // With no room left, busy's sets spawn nothing in x86; idle's still count.
    await redis.hset(keys.ownerVms('x86'), 'busy', 4);
    expect((await master.readSnapshot()).groups.map((g) => g.demand)).toEqual([2, 0, 1]);
    const actions = await master.startSpawnIfRequired();
    expect(await spawnsByGroup()).toEqual([2, 0, 1]);
    expect(actions.filter((a) => a.type === 'spawn')).toHaveLength(3);
  });
});
