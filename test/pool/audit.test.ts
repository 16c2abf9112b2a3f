import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';
import type { CliIo } from '../../src/cli/io.js';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { DEFAULT_AUDIT_MAX_EVENTS, type AuditEvent, type AuditPage } from '../../src/pool/audit.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from '../http/fixtures.js';

// The audit trail (src/pool/audit.ts, commands/includes/audit.lua): every transition script records its event.
const T0 = 1_750_000_000_000;
const input: ConfigInput = {
  redis: { url: REDIS_URL },
  groups: [
    { name: 'g', max_vm_per_user: 5, vm_max_check_fails: 1, on_lease_expiry: 'terminate', lease_timeout: 60 },
    { name: 'r', max_vm_per_user: 5, on_lease_expiry: 'release', lease_timeout: 60 },
  ],
};

const pick = (e: AuditEvent) => [e.event, e.vm, e.owner, e.sandbox, e.task, e.lease === null ? null : 'lease'];

describe('audit trail of the pool scripts (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('audit');
  const keys = poolKeys(prefix);
  const clock = { now: T0 };
  let redis: Redis;
  let vmm: VmManager;

  const all = async (): Promise<AuditEvent[]> => (await vmm.reader.auditEvents({ limit: 1000 })).events;
  const addReady = async (name: string, ip: string, group = 0) => {
    await vmm.addVmToPool(ip, name, group);
    await vmm.startVmCheck(name);
    await vmm.recordHealthCheckResult(name, true);
  };

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
  });
  beforeEach(async () => {
    await deleteKeysWithPrefix(redis, prefix);
    clock.now = T0;
    await vmm.markServerStart();
    clock.now += 1;
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('records a full lifecycle with VM, owner, sandbox, task, lease and time, in order', async () => {
    const start = Date.now();
    await addReady('a1', '10.9.0.1');
    clock.now = T0 + 10;
    const first = await vmm.tryAcquireVm({ groups: [0], owner: 'alice', sandbox: 'sb', workerId: 'w1', taskId: 't1', leaseId: 'L1' });
    expect(first.status).toBe('acquired');
    clock.now = T0 + 11;
    expect((await vmm.tryAcquireVm({ groups: [0], owner: 'alice', sandbox: 'sb', workerId: 'w2', taskId: 't1' })).status).toBe('reattached');
    clock.now = T0 + 20;
    await vmm.renewLease('a1', 'L1');
    clock.now = T0 + 30;
    await vmm.recordHealthCheckResult('a1', false); // a failed check during the build
    expect(await vmm.releaseVm('a1', 'L1')).toBe(true);
    clock.now = T0 + 40;
    expect((await vmm.tryAcquireVm({ groups: [0], owner: 'alice', sandbox: 'sb', workerId: 'w1', taskId: 't2', leaseId: 'L2' })).status).toBe('none');
    // The failed check keeps it out of ready; a good check brings it back.
    await vmm.startVmCheck('a1');
    await vmm.recordHealthCheckResult('a1', true);
    await vmm.holdVm('a1', 'ops', { reason: 'look at it' });
    await vmm.unholdVm('a1');
    clock.now = T0 + 50;
    expect((await vmm.tryAcquireVm({ groups: [0], owner: 'alice', sandbox: 'sb', workerId: 'w1', taskId: 't2', leaseId: 'L2' })).status).toBe('acquired');
    clock.now = T0 + 50 + 60_000;
    expect(await vmm.expireLeases()).toEqual([{ vmName: 'a1', action: 'terminate' }]);
    await vmm.removeVmFromPool('a1');

    const events = await all();
    expect(events.map(pick)).toEqual([
      ['spawned', 'a1', null, null, null, null],
      ['ready', 'a1', null, null, null, null],
      ['acquired', 'a1', 'alice', 'sb', 't1', 'lease'],
      ['reattached', 'a1', 'alice', 'sb', 't1', 'lease'],
      ['lease_renewed', 'a1', 'alice', 'sb', 't1', 'lease'],
      ['check_failed', 'a1', 'alice', 'sb', 't1', 'lease'],
      ['released', 'a1', 'alice', 'sb', 't1', 'lease'],
      ['ready', 'a1', 'alice', 'sb', null, null],
      ['held', 'a1', 'alice', 'sb', null, null],
      ['unheld', 'a1', 'alice', 'sb', null, null],
      ['acquired', 'a1', 'alice', 'sb', 't2', 'lease'],
      ['lease_expired', 'a1', 'alice', 'sb', 't2', 'lease'],
      ['terminate_requested', 'a1', 'alice', 'sb', 't2', 'lease'],
      ['removed', 'a1', 'alice', 'sb', 't2', null],
    ]);
    const [spawned, , acquired, , renewed, failed, released, , held, , acquired2, expired, terminate] = events;
    expect(spawned!.group).toBe('g');
    expect(spawned!.details).toEqual({ ip: '10.9.0.1' });
    expect(acquired!.lease).toBe('L1');
    expect(acquired!.details).toEqual({ worker: 'w1' });
    expect(renewed!.details).toEqual({ lease_expires_at: String(T0 + 20 + 60_000) });
    expect(failed!.details).toEqual({ check_fails: '1' });
    expect(released!.lease).toBe('L1');
    expect(held!.reason).toBe('look at it');
    expect(held!.details).toEqual({ by: 'ops' });
    expect(acquired2!.lease).toBe('L2');
    expect(expired!.details).toEqual({ action: 'terminate' });
    expect(terminate!.reason).toBe('lease_expired');
    // The time is Redis's (the id's), whatever the processes' clocks say.
    for (const e of events) expect(e.time).toBeGreaterThanOrEqual(start - 1000);
    for (const e of events) expect(e.time).toBeLessThanOrEqual(Date.now() + 1000);
    // Ids grow: each is a cursor for the next.
    expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  });

  it('records the reason of every termination, a check that never reported, expired holds and leases released for a check', async () => {
    await addReady('b1', '10.9.0.2');
    await addReady('b2', '10.9.0.3');
    await addReady('r1', '10.9.0.4', 1);
    expect(await vmm.startVmTermination('b1', null, 'operator')).toBe(true);
    await vmm.startVmCheck('b2');
    expect(await vmm.markVmCheckFailed('b2')).toBe(true);
    await vmm.startVmCheck('b2');
    await vmm.recordHealthCheckResult('b2', false);
    await vmm.recordHealthCheckResult('b2', false); // over vm_max_check_fails: terminating
    await vmm.holdVm('r1', 'ops', { until: clock.now + 1000 });
    clock.now += 1000;
    expect(await vmm.expireHolds()).toEqual(['r1']);
    expect((await vmm.tryAcquireVm({ groups: [1], owner: 'bob', sandbox: 's', workerId: 'w' })).status).toBe('acquired');
    clock.now += 60_000;
    expect(await vmm.expireLeases()).toEqual([{ vmName: 'r1', action: 'release' }]);

    const events = await all();
    const of = (vm: string) => events.filter((e) => e.vm === vm).map((e) => [e.event, e.reason ?? e.details.action ?? null]);
    expect(of('b1')).toEqual([
      ['spawned', null],
      ['ready', null],
      ['terminate_requested', 'operator'],
    ]);
    expect(of('b2')).toEqual([
      ['spawned', null],
      ['ready', null],
      ['check_failed', 'the check never reported back'],
      ['check_failed', null],
      ['check_failed', null],
      ['terminate_requested', 'health_check_failed'],
    ]);
    expect(of('r1')).toEqual([
      ['spawned', null],
      ['ready', null],
      ['held', null],
      ['unheld', null],
      ['acquired', null],
      ['lease_expired', 'release'],
    ]);
    expect(events.find((e) => e.vm === 'r1' && e.event === 'held')!.details).toEqual({ by: 'ops', until: String(T0 + 1 + 1000) });
  });

  describe('a VM that goes back because its request was withdrawn records released (reason withdrawn)', () => {
    const request = { groups: [0], owner: 'wendy', sandbox: 'ws', workerId: 'w1', taskId: 'tw', leaseId: 'LW' };
    const waiter = () => ({ member: `${String(T0).padStart(15, '0')}|acquire-tw`, jobId: 'acquire-tw', priority: 0, deadline: clock.now + 600_000 });
    // The request parks (nothing ready), then the line gives it w1 while it waits.
    const parkAndServe = async () => {
      expect((await vmm.tryAcquireVm(request, waiter())).status).toBe('none');
      await addReady('w1', '10.9.1.1');
      expect(await vmm.dispatchAcquireLine('g', 'w1')).toEqual(['acquire-tw']);
      expect(await redis.hget(keys.vm('w1'), 'state')).toBe('in_use');
    };
    const expectReleasedWithdrawn = async () => {
      const events = (await all()).filter((e) => e.vm === 'w1');
      expect(events.map(pick)).toEqual([
        ['spawned', 'w1', null, null, null, null],
        ['ready', 'w1', null, null, null, null],
        ['acquired', 'w1', 'wendy', 'ws', 'tw', 'lease'],
        ['released', 'w1', 'wendy', 'ws', 'tw', 'lease'],
      ]);
      const released = events[3]!;
      // The fields of a builder's release (group, owner, sandbox, task, lease), and why.
      expect(released.group).toBe('g');
      expect(released.lease).toBe('LW');
      expect(released.reason).toBe('withdrawn');
      expect(released.details).toEqual({});
      expect(await redis.hget(keys.vm('w1'), 'state')).toBe('ready');
    };

    it('by cancelAcquire, when its job had not collected the VM', async () => {
      await parkAndServe();
      await vmm.cancelAcquire(waiter(), 'gone', 60_000);
      await expectReleasedWithdrawn();
    });

    it('by the acquire script, when its job collected the VM and runs again after the withdrawal', async () => {
      await parkAndServe();
      expect((await vmm.tryAcquireVm(request, waiter())).status).toBe('acquired'); // collected
      await vmm.cancelAcquire(waiter(), 'gone', 60_000);
      expect(await redis.hget(keys.vm('w1'), 'state')).toBe('in_use'); // served: cancelAcquire leaves it
      expect(await vmm.tryAcquireVm(request, waiter())).toEqual({ status: 'cancelled', reason: 'gone' });
      await expectReleasedWithdrawn();
    });

    it("a builder's own release has no reason", async () => {
      await addReady('w2', '10.9.1.2');
      const got = await vmm.tryAcquireVm({ ...request, taskId: 'tw2', leaseId: 'LW2' });
      expect(got.status).toBe('acquired');
      expect(await vmm.releaseVm('w2', 'LW2')).toBe(true);
      const released = (await all()).filter((e) => e.vm === 'w2' && e.event === 'released');
      expect(released.map((e) => [e.reason, e.lease, e.task])).toEqual([[null, 'LW2', 'tw2']]);
    });
  });

  it('a refused transition records nothing', async () => {
    await addReady('c1', '10.9.0.5');
    const before = (await all()).length;
    expect(await vmm.releaseVm('c1')).toBe(false);
    expect(await vmm.unholdVm('c1')).toBe(false);
    await expect(vmm.removeVmFromPool('c1')).rejects.toThrow(/not terminating/);
    await expect(vmm.renewLease('c1', 'nope')).rejects.toThrow();
    await expect(vmm.addVmToPool('10.9.0.5', 'c1', 0)).rejects.toThrow(/already/);
    expect((await all()).length).toBe(before);
  });

  it('keeps about audit.max_events events (MAXLEN ~), written by writeAuditRetention; the default without it', async () => {
    const capped = new VmManager({ ...input, audit: { max_events: 50 } }, { redis, prefix, clock: () => clock.now });
    try {
      await capped.writeAuditRetention();
      expect(await redis.get(keys.auditMaxEvents)).toBe('50');
      await addReady('d1', '10.9.0.6');
      await capped.tryAcquireVm({ groups: [0], owner: 'o', sandbox: 's', workerId: 'w', leaseId: 'L' });
      for (let i = 0; i < 1000; i++) await capped.renewLease('d1', 'L');
      const length = await capped.reader.auditLength();
      // MAXLEN ~ trims whole stream nodes (100 entries each by default): at least 50, far fewer than 1004.
      expect(length).toBeGreaterThanOrEqual(50);
      expect(length).toBeLessThanOrEqual(250);
      // The newest are kept.
      const page = await capped.reader.auditEvents({ limit: 1000 });
      expect(page.events.at(-1)!.event).toBe('lease_renewed');
      // Without the config key the scripts fall back to their default.
      await vmm.writeAuditRetention();
      expect(await redis.get(keys.auditMaxEvents)).toBeNull();
      expect(DEFAULT_AUDIT_MAX_EVENTS).toBe(100_000);
      expect(parseConfig({}, {}).audit).toBeUndefined();
      expect(() => parseConfig({ audit: { max_events: 0 } }, {})).toThrow(/audit\.max_events/);
      expect(() => parseConfig({ audit: { keep: 1 } }, {})).toThrow(/audit\.keep/);
    } finally {
      await capped.close();
    }
  });

  it('pages with limit and next, from an event id (exclusive) or a time (inclusive), filtered by VM and owner', async () => {
    await addReady('e1', '10.9.0.7');
    await addReady('e2', '10.9.0.8');
    await new Promise((r) => setTimeout(r, 5));
    const acquiredFrom = Date.now();
    await vmm.tryAcquireVm({ groups: [0], owner: 'ann', sandbox: 's', workerId: 'w', leaseId: 'La' });
    await vmm.tryAcquireVm({ groups: [0], owner: 'ben', sandbox: 's', workerId: 'w', leaseId: 'Lb' });
    const every = await all();
    expect(every).toHaveLength(6);
    const pages: AuditEvent[][] = [];
    let page: AuditPage = { events: [], next: null, more: true };
    while (page.more) {
      page = await vmm.reader.auditEvents({ since: page.next, limit: 4 });
      pages.push(page.events);
    }
    expect(pages.map((p) => p.length)).toEqual([4, 2]);
    expect(pages.flat().map((e) => e.id)).toEqual(every.map((e) => e.id));
    // A time (Redis's clock) is inclusive.
    expect((await vmm.reader.auditEvents({ since: acquiredFrom })).events.map((e) => e.event)).toEqual(['acquired', 'acquired']);
    expect((await vmm.reader.auditEvents({ owner: 'ben' })).events.map((e) => [e.event, e.vm])).toEqual([['acquired', every[5]!.vm]]);
    expect((await vmm.reader.auditEvents({ vm: 'e1' })).events.map((e) => e.vm)).toEqual(['e1', 'e1', 'e1']);
    // Past the end: nothing more, and next stays the cursor given.
    const last = every.at(-1)!.id;
    expect(await vmm.reader.auditEvents({ since: last })).toEqual({ events: [], next: last, more: false });
    await expect(vmm.reader.auditEvents({ since: 'yesterday' })).rejects.toThrow(/since must be/);
  });

  it('vmpool events prints them, filtered, as text or JSON lines, and --follow prints new ones until stopped', async () => {
    await addReady('f1', '10.9.0.9');
    await addReady('f2', '10.9.0.10');
    await vmm.tryAcquireVm({ groups: [0], owner: 'cat', sandbox: 'box', workerId: 'w', taskId: 'T9', leaseId: 'Lc' });
    const run = async (args: string[], signal?: AbortSignal) => {
      let out = '';
      let err = '';
      const io: CliIo = { out: (t) => (out += t), err: (t) => (err += t), env: { VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent', REDIS_URL }, signal };
      const code = await runCli(args, io);
      return { code, out, err, lines: () => out.trim().split('\n').filter(Boolean) };
    };
    const json = await run(['events', '--json', '--owner', 'cat']);
    expect(json.code, json.err).toBe(0);
    const acquired = json.lines().map((l) => JSON.parse(l) as AuditEvent);
    expect(acquired.map((e) => [e.event, e.owner, e.sandbox, e.task, e.lease])).toEqual([['acquired', 'cat', 'box', 'T9', 'Lc']]);
    const text = await run(['events', '--vm', 'f2']);
    expect(text.lines()).toHaveLength(2);
    expect(text.lines()[0]).toMatch(/^\d{4}-\d\d-\d\dT.*Z {2}spawned +f2 {2}ip=10\.9\.0\.10$/);
    expect((await run(['events', '--limit', '3'])).lines()).toHaveLength(3);
    expect((await run(['events', '--limit', '0'])).code).toBe(2);
    expect((await run(['events', '--since', 'someday'])).code).toBe(2);

    const stop = new AbortController();
    let followed = '';
    const io: CliIo = { out: (t) => (followed += t), err: () => undefined, env: { VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent', REDIS_URL }, signal: stop.signal };
    const following = runCli(['events', '--follow', '--json', '--vm', 'f2'], io);
    await waitUntil(() => followed.split('\n').filter(Boolean).length === 2);
    await vmm.holdVm('f2', 'ops');
    await waitUntil(() => followed.includes('"event":"held"'));
    stop.abort();
    expect(await following).toBe(0);
  });
});

describe('GET /api/v1/events', () => {
  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit(
      'audit-api',
      webTestConfig({
        web: { port: 0, auth: { tokens: [{ token: ADMIN_TOKEN, scopes: ['admin'] }, { token: BUILDER_TOKEN, scopes: ['builder'] }] } },
      }),
    );
    await kit.addReady('h1', '10.9.1.1');
    await kit.addReady('h2', '10.9.1.2');
    await kit.vmm.tryAcquireVm({ groups: [0], owner: 'dora', sandbox: 's', workerId: 'w', leaseId: 'Ld' });
  });
  afterAll(async () => {
    await kit?.close();
  });

  const get = async (query: string, token = ADMIN_TOKEN) => {
    const res = await kit.fetch(`/api/v1/events${query}`, { token });
    return { status: res.status, body: (await res.json()) as AuditPage & { error?: string; message?: string } };
  };

  it('pages with limit and next, and filters by vm and owner', async () => {
    const all = await get('?limit=1000');
    expect(all.status).toBe(200);
    expect(all.body.events.map((e) => e.event)).toEqual(['spawned', 'ready', 'spawned', 'ready', 'acquired']);
    const first = await get('?limit=3');
    expect([first.body.events.length, first.body.more]).toEqual([3, true]);
    const second = await get(`?limit=3&since=${first.body.next}`);
    expect([second.body.events.length, second.body.more]).toEqual([2, false]);
    expect([...first.body.events, ...second.body.events]).toEqual(all.body.events);
    const dora = await get('?owner=dora');
    expect(dora.body.events.map((e) => [e.event, e.owner, e.sandbox, e.lease])).toEqual([['acquired', 'dora', 's', 'Ld']]);
    expect((await get('?vm=h2')).body.events.every((e) => e.vm === 'h2')).toBe(true);
    const since = all.body.events[4]!.time;
    const fromTime = (await get(`?since=${since}`)).body.events;
    expect(fromTime.at(-1)!.event).toBe('acquired');
    expect(fromTime.every((e) => e.time >= since)).toBe(true);
  });

  it('answers 400 to bad query parameters and 403 to a builder token', async () => {
    for (const q of ['?limit=0', '?limit=1001', '?limit=abc', '?limit=2.5', '?since=yesterday', '?since=1-2-3', '?vm=no%20such', '?owner=', '?limit=1&limit=2', '?colour=red']) {
      const res = await get(q);
      expect(res.status, q).toBe(400);
      expect(res.body.error, q).toBe('validation_error');
    }
    expect((await get('', BUILDER_TOKEN)).status).toBe(403);
  });
});

async function waitUntil(cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}
