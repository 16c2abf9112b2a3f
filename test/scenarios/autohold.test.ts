import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { runVmpoolCli, startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// Autohold with real processes (acquire, spawn, health, terminate, reconcile), real hook machines
// and the real `vmpool` CLI: a rule added with `vmpool autohold add` keeps the VM of a failed
// build (its count runs down, `vmpool events` shows the hold with the rule), and a successful
// build's VM goes back to its owner as before (dirty, acquirable again).
const prefix = uniquePrefix('autohold-scenario');
const stateDir = hookStateDir('autohold');
const PORT = 2295;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [{ name: 'fedora', ...hookGroup({ stateDir, port: PORT }), vm_health_check_period: 3600, min_ready: 1, max_vm_total: 4 }],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
const workers: WorkerProcess[] = [];
const configFile = writeConfigFile(config);
const cli = (...args: string[]) => runVmpoolCli(['--config', configFile, ...args], { PATH: process.env.PATH, HOME: process.env.HOME, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent' });

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  const env = { VMPOOL_CONFIG: configFile, VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await client?.close();
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

describe('autohold', () => {
  it("keeps a failed build's VM and runs its count down; a successful build's VM is recycled as before", async () => {
    const added = await cli('autohold', 'add', '--owner', 'copr-*', '--count', '2', '--for', '1h', '--reason', 'segfault in gcc', '--json');
    expect(added.code, added.stderr).toBe(0);
    const rule = JSON.parse(added.stdout) as { id: number; count: number };
    expect(rule.count).toBe(2);

    // A successful build: its VM goes back to its owner's sandbox, and the next build there gets it.
    const ok = await client.acquire({ owner: 'copr-alice', sandbox: 'alice/a', groups: ['fedora'], timeoutMs: 30_000 });
    expect(await client.release(ok, { outcome: 'success' })).toBe(true);
    expect((await vmm.getVmRecord(ok.vmName)).heldBy).toBeNull();
    const again = await client.acquire({ owner: 'copr-alice', sandbox: 'alice/a', groups: ['fedora'], timeoutMs: 30_000 });
    expect(again.vmName).toBe(ok.vmName);

    // That build fails: its VM is held for the rule, not handed out again.
    expect(await client.release(again, { outcome: 'failed' })).toBe(true);
    const held = await vmm.getVmRecord(again.vmName);
    expect([held.state, held.heldBy, held.holdReason]).toEqual(['ready', `autohold:${rule.id}`, 'segfault in gcc']);
    expect(held.heldUntil! - held.heldSince!).toBe(3600_000);
    const listed = await cli('autohold', 'list', '--json');
    expect((JSON.parse(listed.stdout) as { id: number; count: number }[]).map((r) => [r.id, r.count])).toEqual([[rule.id, 1]]);
    const next = await client.acquire({ owner: 'copr-alice', sandbox: 'alice/a', groups: ['fedora'], timeoutMs: 30_000 });
    expect(next.vmName).not.toBe(again.vmName);

    const events = await cli('events', '--vm', again.vmName, '--json');
    const lines = events.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; reason?: string | null });
    expect(lines.map((e) => e.event)).toEqual(expect.arrayContaining(['released', 'held']));
    expect(JSON.stringify(lines.find((e) => e.event === 'held'))).toContain(`autohold:${rule.id}`);

    // Another owner's failed build is not matched; the second match takes the last count.
    const bob = await client.acquire({ owner: 'bob', sandbox: 'bob/b', groups: ['fedora'], timeoutMs: 30_000 });
    expect(await client.release(bob, { outcome: 'failed' })).toBe(true);
    expect((await vmm.getVmRecord(bob.vmName)).heldBy).toBeNull();
    expect(await client.release(next, { outcome: 'failed' })).toBe(true);
    expect((await vmm.getVmRecord(next.vmName)).heldBy).toBe(`autohold:${rule.id}`);
    expect((await cli('autohold', 'list')).stdout.trim()).toBe('no autohold rules');

    // The pool carries on: reconcile keeps min_ready with the held VMs out of it.
    await waitForWithLogs(workers, async () => (await vmm.getAllVmRecords()).some((v) => v.state === 'ready' && v.owner === null && v.heldBy === null), 30_000, 'a clean ready VM');
  }, 120_000);
});
