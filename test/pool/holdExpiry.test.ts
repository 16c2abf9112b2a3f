import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { InvalidVmRequest, VmStates } from '../../src/pool/types.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { parseDuration } from '../../src/time.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { createWebKit, type WebKit } from '../http/fixtures.js';

const T0 = 1_750_000_000_000;
const input: ConfigInput = { redis: { url: REDIS_URL }, max_hold_age: 3600, groups: [{ name: 'g', max_vm_per_user: 10 }] };

async function addReady(vmm: VmManager, name: string, ip: string) {
  await vmm.addVmToPool(ip, name, 'g');
  await vmm.startVmCheck(name);
  await vmm.recordHealthCheckResult(name, true);
}

describe('holds that expire (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('hold-expiry');
  const keys = poolKeys(prefix);
  const clock = { now: T0 };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
    await vmm.markServerStart();
    clock.now += 1;
    await addReady(vmm, 'h1', '10.8.0.1');
    await addReady(vmm, 'h2', '10.8.0.2');
    await addReady(vmm, 'h3', '10.8.0.3');
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('keeps who, why and until, and gives the VM back when the time is up', async () => {
    expect(await vmm.holdVm('h1', 'ops', { until: T0 + 60_000, reason: 'kernel panic in build 42' })).toBe(true);
    const held = await vmm.getVmRecord('h1');
    expect([held.heldBy, held.holdReason, held.heldUntil]).toEqual(['ops', 'kernel panic in build 42', T0 + 60_000]);
    expect(await redis.zscore(keys.holdsExpiring, 'h1')).toBe(String(T0 + 60_000));

    clock.now = T0 + 59_000;
    expect(await vmm.expireHolds()).toEqual([]);
    clock.now = T0 + 60_000;
    expect(await vmm.expireHolds()).toEqual(['h1']);
    const back = await vmm.getVmRecord('h1');
    expect([back.heldBy, back.holdReason, back.heldUntil, back.state]).toEqual([null, null, null, VmStates.READY]);
    expect(await redis.zcard(keys.holdsExpiring)).toBe(0);
    // Acquirable again: the three ready VMs all go out.
    const names = new Set<string>();
    for (let i = 0; i < 3; i++) names.add((await vmm.acquireVm({ groups: [0], owner: `o${i}`, sandbox: 's', workerId: 'w' })).vmName);
    expect(names).toEqual(new Set(['h1', 'h2', 'h3']));
  });

  it('caps every hold at max_hold_age, and gives one without an end that end', async () => {
    clock.now = T0 + 100_000;
    expect(await vmm.holdVm('h2', 'ops')).toBe(true);
    expect((await vmm.getVmRecord('h2')).heldUntil).toBe(clock.now + 3600_000);
    expect(await vmm.unholdVm('h2')).toBe(true);
    expect(await redis.zscore(keys.holdsExpiring, 'h2')).toBeNull();
    expect(await vmm.holdVm('h2', 'ops', { until: clock.now + 86_400_000 })).toBe(true);
    expect((await vmm.getVmRecord('h2')).heldUntil).toBe(clock.now + 3600_000);
  });

  it('refuses an end in the past, changing nothing', async () => {
    const before = await vmm.getVmRecord('h3');
    await expect(vmm.holdVm('h3', 'ops', { until: clock.now - 1 })).rejects.toBeInstanceOf(InvalidVmRequest);
    expect(await vmm.getVmRecord('h3')).toEqual(before);
  });

  it('a reconcile cycle ends due holds, and a removed VM leaves no expiring hold behind', async () => {
    clock.now += 3600_000;
    const report = await master.doCycle();
    expect(report.counts.expireHolds).toBe(1);
    expect((await vmm.getVmRecord('h2')).heldBy).toBeNull();
    await addReady(vmm, 'h4', '10.8.0.4');
    expect(await vmm.holdVm('h4', 'ops', { until: clock.now + 1_000 })).toBe(true);
    expect(await vmm.startVmTermination('h4', null, 'operator')).toBe(true);
    await vmm.removeVmFromPool('h4');
    expect(await redis.zcard(keys.holdsExpiring)).toBe(0);
  });
});

describe('holds from the CLI, the API and a real reconcile process', () => {
  let kit: WebKit;
  let reconcile: WorkerProcess | undefined;

  beforeAll(async () => {
    kit = await createWebKit('hold-expiry-api', { redis: { url: REDIS_URL }, vm_cycle_timeout: 0.5, groups: [{ name: 'g' }] });
    await kit.addReady('a1', '10.8.1.1');
    await kit.addReady('a2', '10.8.1.2');
  });
  afterAll(async () => {
    await reconcile?.stop();
    await kit?.close();
  });

  it('parses durations', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('30m')).toBe(1_800_000);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(parseDuration('1d')).toBe(86_400_000);
    expect(parseDuration('45')).toBe(45_000);
    for (const bad of ['', '0', 'soon', '-5m', '1w', '2 hours']) expect(parseDuration(bad), bad).toBeNull();
  });

  it('POST /vms/:name/hold takes for or until and a reason; both at once is a 400 that changes nothing', async () => {
    const both = await kit.fetch('/api/v1/vms/a1/hold', { method: 'POST', json: { for: 60, until: '2030-01-01T00:00:00Z' } });
    expect(both.status).toBe(400);
    expect((await kit.vmm.getVmRecord('a1')).heldBy).toBeNull();
    const res = await kit.fetch('/api/v1/vms/a1/hold', { method: 'POST', json: { by: 'ops', for: 1.5, reason: 'look at /var/log' } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { vm: { heldBy: string; holdReason: string; heldUntil: number } };
    expect(body.vm.heldBy).toBe('ops');
    expect(body.vm.holdReason).toBe('look at /var/log');
    expect(body.vm.heldUntil).toBeGreaterThan(Date.now());
    const page = await (await kit.fetch('/')).text();
    expect(page).toMatch(/ops \([^)]*\): look at \/var\/log, until/);
  });

  it('vmpool hold --for --reason holds with an end; a real reconcile process ends both holds when due', async () => {
    const file = writeConfigFile({ redis: { url: REDIS_URL }, vm_cycle_timeout: 0.5, groups: [{ name: 'g' }] });
    let out = '';
    const io = { out: (t: string) => (out += t), err: (t: string) => (out += t), env: { VMPOOL_PREFIX: kit.prefix, LOG_LEVEL: 'silent' } };
    expect(await runCli(['--config', file, 'hold', 'a2', '--for', '2s', '--reason', 'flaky network'], io), out).toBe(0);
    expect(await runCli(['--config', file, 'hold', 'a2', '--for', 'soon'], io)).toBe(2);
    const a2 = await kit.vmm.getVmRecord('a2');
    expect(a2.holdReason).toBe('flaky network');
    expect(a2.heldUntil! - a2.heldSince!).toBe(2_000);

    reconcile = await startWorkerProcess('reconcile', { VMPOOL_CONFIG: file, VMPOOL_PREFIX: kit.prefix });
    await waitFor(async () => (await kit.vmm.getVmRecord('a1')).heldBy === null && (await kit.vmm.getVmRecord('a2')).heldBy === null, 15_000, 'both holds ended');
    expect((await kit.vmm.getVmRecord('a2')).state).toBe(VmStates.READY);
    expect(parseConfig(input, {}).max_hold_age).toBe(3600);
  });
});
