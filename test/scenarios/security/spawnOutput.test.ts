import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../../src/config/index.js';
import { processTypeSpecs } from '../../../src/processors/index.js';
import { startProcessTypes, type RunningProcess } from '../../../src/runtime/boot.js';
import { VmManager } from '../../../src/pool/vmManager.js';
import { addressPolicy, parseCidr } from '../../../src/providers/addressPolicy.js';
import { QueueNames } from '../../../queues/names.js';
import { spawnJobId, spawnJobOptions } from '../../../queues/spawn.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../../helpers/redis.js';
import { waitFor } from '../../helpers/processes.js';

// Spawn and terminate workers (in this process) with a command provider whose real hook processes
// print what the test puts in a file, and record every terminate call with the name and address.
const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-spawnout-'));
const spawnHook = join(dir, 'spawn.sh');
const terminateHook = join(dir, 'terminate.sh');
writeFileSync(spawnHook, '#!/bin/sh\ncat "$HOOK_DIR/next-$VMPOOL_SPAWN_ID"\n');
writeFileSync(terminateHook, '#!/bin/sh\necho "$VMPOOL_VM_NAME $VMPOOL_VM_IP" >> "$HOOK_DIR/terminated"\n');
chmodSync(spawnHook, 0o755);
chmodSync(terminateHook, 0o755);

const prefix = uniquePrefix('spawn-output');
const provider = { type: 'command' as const, spawn_cmd: [spawnHook], terminate_cmd: [terminateHook], env: { HOOK_DIR: dir } };
const input: ConfigInput = {
  groups: [
    { name: 'cloud', provider, check: { type: 'tcp', port: 22 } },
    { name: 'private', provider, check: { type: 'tcp', port: 22 }, allowed_networks: ['10.0.0.0/8', 'fd00::/8'] },
  ],
};
const config = parseConfig(input, {});

let redis: Redis;
let vmm: VmManager;
let running: RunningProcess;
let spawnQueue: Queue;
let events: QueueEvents;

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  running = await startProcessTypes(processTypeSpecs, ['spawn', 'terminate'], config, { prefix });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  events = new QueueEvents(QueueNames.SPAWN, { connection: connect({ maxRetriesPerRequest: null }), prefix });
  await events.waitUntilReady();
});

afterAll(async () => {
  await running?.stop(5_000);
  await events?.close();
  await spawnQueue?.close();
  await vmm?.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
  rmSync(dir, { recursive: true, force: true });
});

const terminated = () => (existsSync(join(dir, 'terminated')) ? readFileSync(join(dir, 'terminated'), 'utf8').trim().split('\n') : []);

async function spawnPrinting(group: string, spawnId: string, line: string) {
  writeFileSync(join(dir, `next-${spawnId}`), `${line}\n`);
  await vmm.registerSpawn(group, spawnId);
  const job = await spawnQueue.add('spawn', { group, spawnId }, { ...spawnJobOptions, jobId: spawnJobId(spawnId) });
  return job.waitUntilFinished(events, 20_000).then(
    (value: unknown) => ({ ok: true as const, value }),
    (error: Error) => ({ ok: false as const, error }),
  );
}

describe('spawn output checked against where VMs may live', () => {
  it('refuses unusable addresses, terminates the machine by the name and address printed, and records nothing', async () => {
    const bad = ['0.0.0.0', '255.255.255.255', '169.254.169.254', '127.0.0.1', '224.0.0.1', '::', 'fe80::1', '::ffff:127.0.0.1'];
    for (const [i, ip] of bad.entries()) {
      const name = `bad-${i}`;
      const outcome = await spawnPrinting('cloud', `bad${i}`, JSON.stringify({ name, ip }));
      expect(outcome.ok, ip).toBe(false);
      if (!outcome.ok) expect(outcome.error.message, ip).toMatch(/unusable address/);
      await waitFor(() => terminated().includes(`${name} ${ip}`), 10_000, `${name} terminated`);
    }
    // A zone id is not an address a VM is reached by.
    const zoned = await spawnPrinting('cloud', 'zoned', JSON.stringify({ name: 'zoned-1', ip: 'fe80::1%eth0' }));
    expect(zoned.ok).toBe(false);
    expect(await vmm.getAllVms()).toEqual([]);
    expect(await vmm.getSpawnsInFlight('cloud')).toEqual([]);
  });

  it('takes a routable address, and only addresses in allowed_networks when a group sets them', async () => {
    expect((await spawnPrinting('cloud', 'good', JSON.stringify({ name: 'good-1', ip: '192.0.2.10' }))).ok).toBe(true);
    expect((await vmm.getVmByName('good-1')).vmIp).toBe('192.0.2.10');
    const outside = await spawnPrinting('private', 'outside', JSON.stringify({ name: 'outside-1', ip: '192.0.2.11' }));
    expect(outside.ok).toBe(false);
    if (!outside.ok) expect(outside.error.message).toMatch(/allowed_networks/);
    await waitFor(() => terminated().includes('outside-1 192.0.2.11'), 10_000, 'outside-1 terminated');
    expect((await spawnPrinting('private', 'inside', 'IP=10.20.30.40 vm_name=inside-1')).ok).toBe(true);
    expect((await spawnPrinting('private', 'inside6', JSON.stringify({ name: 'inside-2', ip: 'fd00::5' }))).ok).toBe(true);
    expect((await vmm.getAllVms()).map((v) => v.vmName).sort()).toEqual(['good-1', 'inside-1', 'inside-2']);
  });

  it('fails a spawn that reports a name the pool has, terminates that machine by its own address, and leaves the pool VM alone', async () => {
    const before = await vmm.getVmByName('inside-1');
    const outcome = await spawnPrinting('private', 'dup', JSON.stringify({ name: 'inside-1', ip: '10.99.0.1' }));
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) expect(outcome.error.message).toMatch(/already in the pool/);
    await waitFor(() => terminated().includes('inside-1 10.99.0.1'), 10_000, 'the duplicate terminated');
    expect(terminated()).not.toContain('inside-1 10.20.30.40');
    expect(await vmm.getVmByName('inside-1')).toEqual(before);
  });

  it('validates CIDRs', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    for (const bad of ['10.0.0.0', '10.0.0.0/33', 'fd00::/129', 'x/8', 'fe80::1%eth0/64', '']) expect(() => parseCidr(bad), bad).toThrow();
    expect(() => parseConfig({ groups: [{ name: 'g', allowed_networks: ['10.0.0.0/40'] }] }, {})).toThrow(/groups\.0\.allowed_networks\.0/);
    const local = addressPolicy({ allowLoopback: true });
    expect(local.refusal('127.5.6.7')).toBeNull();
    expect(local.refusal('169.254.169.254')).not.toBeNull();
  });
});
