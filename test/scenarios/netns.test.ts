// End to end: the whole system as its real worker processes (acquire, spawn, health,
// terminate, reconcile) against the real Redis, with real hosts: the netns harness hooks
// (examples/netns) make network namespaces running Debian's OpenSSH sshd, used as the command
// provider's spawn_cmd, terminate_cmd and list_cmd, and checked with the ssh check.
// Needs root, `ip netns`, sshd and ssh-keygen, as CI has; skipped without them (failed under CI).
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Queue, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { VmManager, VmStates, type VmDescriptor } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { QueueNames } from '../../queues/names.js';
import { spawnJobOptions } from '../../queues/spawn.js';
import { createNetnsHarness, isLive, liveGroupMembers, type NetnsHarness } from '../helpers/netns.js';
import { describeWithTools } from '../helpers/tools.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { closePool, connect, poolKeys, REDIS_URL, uniquePrefix } from '../helpers/redis.js';

const run = promisify(execFile);
const prefix = uniquePrefix('e2e');
const marks = mkdtempSync(join(tmpdir(), 'vmpool-e2e-'));
const SPAWN_TIMEOUT_HANG = 2;

// Wrappers around the harness spawn hook, for the failure cases. Each records its pid (its own
// process group: hooks run detached) and what the harness printed, per attempt.
const hangHook = join(marks, 'hang.sh');
writeFileSync(
  hangHook,
  `#!/usr/bin/env bash
# Makes a real host, then hangs: vmpool must kill the whole process group at spawn_timeout and
# terminate the host whose name was printed.
set -euo pipefail
echo "$$" >>"$MARK_DIR/hang-attempts"
"$NETNS_SPAWN" | tee "$MARK_DIR/hang-$$.out"
sleep 600 &
echo "$!" >"$MARK_DIR/hang-$$.child"
wait
`,
  { mode: 0o755 },
);
const garbageHook = join(marks, 'garbage.sh');
writeFileSync(
  garbageHook,
  `#!/usr/bin/env bash
# Makes a real host, then ends with a line that is no spawn result.
set -euo pipefail
echo "$$" >>"$MARK_DIR/garbage-attempts"
"$NETNS_SPAWN" | tee "$MARK_DIR/garbage-$$.out"
echo "done; the address is somewhere"
`,
  { mode: 0o755 },
);

let hosts: NetnsHarness | undefined;
let bad: NetnsHarness | undefined;
let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let spawnQueue: Queue;
let terminateQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];

function buildConfig(h: NetnsHarness, b: NetnsHarness): ConfigInput {
  const failing = {
    min_ready: 1,
    max_vm_total: 1,
    max_spawn_processes: 1,
    // One spawn (with its retries) per group in this run.
    vm_spawn_min_interval: 3600,
    check: { type: 'tcp' as const, port: 22 },
    orphan_check_period: 0,
  };
  const badProvider = (spawn: string) => ({
    type: 'command' as const,
    spawn_cmd: [spawn],
    terminate_cmd: b.terminateCmd,
    spawn_timeout: SPAWN_TIMEOUT_HANG,
    terminate_timeout: 20,
    kill_grace: 0.5,
    env: { ...b.env, MARK_DIR: marks, NETNS_SPAWN: b.spawnCmd[0]! },
  });
  return {
    redis: { url: REDIS_URL, prefix },
    vm_cycle_timeout: 0.5,
    groups: [
      {
        name: 'netns',
        archs: ['x86_64'],
        min_ready: 1,
        max_vm_total: 2,
        max_vm_per_user: 2,
        max_spawn_processes: 1,
        vm_spawn_min_interval: 0,
        vm_dirty_terminating_timeout: 3,
        vm_health_check_period: 1,
        vm_ssh_check_timeout: 3,
        vm_max_check_fails: 0,
        vm_terminating_timeout: 30,
        lease_timeout: 60,
        provider: {
          type: 'command',
          spawn_cmd: h.spawnCmd,
          terminate_cmd: h.terminateCmd,
          list_cmd: h.listCmd,
          spawn_timeout: 20,
          terminate_timeout: 20,
          list_timeout: 10,
          env: h.env,
        },
        check: { type: 'ssh', user: 'root', private_key: h.privateKeyPath, known_hosts: join(marks, 'known_vms') },
        orphan_check_period: 1,
        orphan_grace_period: 3,
      },
      { name: 'hang', provider: badProvider(hangHook), ...failing },
      { name: 'garbage', provider: badProvider(garbageHook), ...failing },
    ],
  };
}

async function namespaces(harness: NetnsHarness): Promise<string[]> {
  const { stdout } = await run('ip', ['netns', 'list']);
  return stdout
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n.startsWith(`${harness.prefix}-`));
}

async function readyCleanVm(except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates('netns', [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

async function gone(vmName: string): Promise<boolean> {
  return (await vmm.getAllVms()).every((v) => v.vmName !== vmName);
}

const ALL_STATES = ['completed', 'failed', 'active', 'waiting', 'delayed', 'prioritized', 'waiting-children'] as const;

async function terminateJobsFor(vmName: string): Promise<Job[]> {
  return (await terminateQueue.getJobs([...ALL_STATES])).filter((j) => j.data.vmName === vmName);
}

async function spawnJobsOf(group: string): Promise<Job[]> {
  return (await spawnQueue.getJobs([...ALL_STATES])).filter((j) => j.data.group === group);
}

/** Pids of a failure hook's attempts, oldest first. */
function attempts(kind: 'hang' | 'garbage'): number[] {
  const file = join(marks, `${kind}-attempts`);
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number) : [];
}

/** The host name the harness printed in one attempt (its last JSON line with a name). */
function hostOf(kind: 'hang' | 'garbage', pid: number): string | null {
  const file = join(marks, `${kind}-${pid}.out`);
  if (!existsSync(file)) return null;
  const names = readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => (JSON.parse(l) as { name?: string }).name);
  return names.at(-1) ?? null;
}

describeWithTools(['ip netns', 'sshd', 'ssh-keygen'], 'end to end with real hosts (network namespaces running OpenSSH)', () => {
  beforeAll(async () => {
    hosts = await createNetnsHarness();
    do {
      await bad?.cleanup();
      bad = await createNetnsHarness();
    } while (bad.net === hosts.net);
    const config = buildConfig(hosts, bad);
    redis = connect();
    vmm = new VmManager(config, { redis, prefix });
    client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
    terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
    reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
    const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
    const types = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'];
    workers.push(...(await Promise.all(types.map((t) => startWorkerProcess(t, env)))));
  }, 60_000);

  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    // A hook still hanging (the run failed early): kill its process group.
    for (const pgid of [...attempts('hang'), ...attempts('garbage')]) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await hosts?.cleanup();
    await bad?.cleanup();
    rmSync(marks, { recursive: true, force: true });
    await closePool(prefix, redis, [client, spawnQueue, terminateQueue, vmm], reconcileQueue);
  }, 60_000);

  let used: string;

  it('spawns a host that reaches ready through a real SSH check', async () => {
    const vm = await waitFor(() => readyCleanVm(), 40_000, 'a ready VM in group netns');
    expect(vm.vmName).toMatch(new RegExp(`^${hosts!.prefix}-\\d+-[0-9a-f]{6}$`));
    expect(vm.vmIp.startsWith(`${hosts!.net}.`)).toBe(true);
    expect(await namespaces(hosts!)).toContain(vm.vmName);
    // The host's own sshd logged the health checker's login with the harness key.
    const sshdLog = readFileSync(join(hosts!.dir, 'hosts', vm.vmName, 'sshd.log'), 'utf8');
    expect(sshdLog).toMatch(/Accepted publickey for root from/);
    // accept-new kept the host's key in the VM's record (every health replica sees it), not in a file.
    const hostKey = hosts!.hostPublicKey(vm.vmName).split(' ').slice(0, 2).join(' ');
    expect(await redis.hget(poolKeys(prefix).vm(vm.vmName), 'host_key')).toBe(hostKey);
    expect(existsSync(join(marks, 'known_vms'))).toBe(false);
  }, 60_000);

  it('acquires, releases, reuses for the same owner and sandbox, and terminates after the dirty timeout', async () => {
    const a1 = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', arch: 'x86_64', taskId: 'e2e-1', timeoutMs: 20_000 });
    expect(a1.group).toBe('netns');
    // Normally the warm VM; a spawn for the waiting request may win if that VM was mid-check.
    used = a1.vmName;
    expect((await vmm.getVmByName(used)).state).toBe(VmStates.IN_USE);
    expect(await namespaces(hosts!)).toContain(used);
    expect(await client.release(a1)).toBe(true);

    const a2 = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', arch: 'x86_64', taskId: 'e2e-2', timeoutMs: 20_000 });
    expect(a2.vmName).toBe(used);
    expect((await vmm.getVmByName(used)).buildsCount).toBe(1);
    expect(await client.release(a2)).toBe(true);
    // Released, it is ready again; with vm_health_check_period 1 a check may start right after the
    // release (check_health for the check's length), so wait for the ready state rather than read once.
    const released = await waitFor(async () => {
      const vm = await vmm.getVmByName(used);
      return vm.state === VmStates.READY ? vm : null;
    }, 10_000, 'the released VM ready');
    expect(released.owner).toBe('alice');

    await waitFor(() => gone(used), 30_000, 'the dirty VM terminated');
    expect((await terminateJobsFor(used)).map((j) => j.data.reason)).toEqual(['dirty_timeout']);
    await waitFor(async () => !(await namespaces(hosts!)).includes(used), 10_000, 'its namespace deleted');
  }, 60_000);

  it('terminates and replaces a host whose sshd was killed', async () => {
    const victim = await waitFor(() => readyCleanVm([used]), 40_000, 'a ready VM');
    const pid = hosts!.sshdPid(victim.vmName);
    process.kill(pid, 'SIGKILL');
    await waitFor(() => gone(victim.vmName), 30_000, 'the broken VM terminated');
    expect((await terminateJobsFor(victim.vmName)).map((j) => j.data.reason)).toEqual(['health_check_failed']);
    expect(await namespaces(hosts!)).not.toContain(victim.vmName);
    const replacement = await waitFor(() => readyCleanVm([used, victim.vmName]), 40_000, 'a replacement VM');
    expect(replacement.vmName).not.toBe(victim.vmName);
    expect(await namespaces(hosts!)).toContain(replacement.vmName);
  }, 90_000);

  it('kills a spawn hook that hangs at its timeout, with its whole process group, and removes its host', async () => {
    // Three attempts with backoff (spawnJobOptions), each killed at spawn_timeout.
    const job = await waitFor(
      async () => (await spawnJobsOf('hang')).find((j) => j.finishedOn !== undefined && j.failedReason),
      60_000,
      'the hanging spawn job to fail',
    );
    expect(await job.getState()).toBe('failed');
    expect(job.attemptsMade).toBe(spawnJobOptions.attempts);
    expect(job.failedReason).toMatch(new RegExp(`spawn_cmd timed out after ${SPAWN_TIMEOUT_HANG}s \\(process group killed\\)`));
    expect(job.failedReason).toMatch(/; terminated /);
    const pgids = attempts('hang');
    expect(pgids).toHaveLength(spawnJobOptions.attempts!);
    for (const pgid of pgids) {
      expect(liveGroupMembers(pgid)).toEqual([]);
      expect(isLive(Number(readFileSync(join(marks, `hang-${pgid}.child`), 'utf8')))).toBe(false);
      const host = hostOf('hang', pgid);
      expect(host).toMatch(new RegExp(`^${bad!.prefix}-`));
      expect(await namespaces(bad!)).not.toContain(host);
    }
    expect(await vmm.getAllVmsInGroup('hang')).toEqual([]);
    expect(await vmm.getSpawnsInFlight('hang')).toEqual([]);
  }, 90_000);

  it('fails a spawn hook that prints garbage cleanly: no record and no host', async () => {
    const job = await waitFor(
      async () => (await spawnJobsOf('garbage')).find((j) => j.finishedOn !== undefined && j.failedReason),
      60_000,
      'the garbage spawn job to fail',
    );
    expect(await job.getState()).toBe('failed');
    expect(job.failedReason).toMatch(/spawn_cmd's last line "done; the address is somewhere" is neither a JSON object/);
    const pids = attempts('garbage');
    expect(pids).toHaveLength(spawnJobOptions.attempts!);
    const made = pids.map((pid) => hostOf('garbage', pid));
    for (const host of made) expect(host).toMatch(new RegExp(`^${bad!.prefix}-`));
    expect(job.failedReason).toContain(`; terminated ${made.at(-1)}`);
    expect(await vmm.getAllVmsInGroup('garbage')).toEqual([]);
    expect(await vmm.getSpawnsInFlight('garbage')).toEqual([]);
    // Neither failing group left a host behind.
    expect(await namespaces(bad!)).toEqual([]);
  }, 90_000);

  it('finds a host made outside the pool with the leak check and terminates it, but leaves an untagged one alone', async () => {
    // Made by running the hook by hand: one with this pool's tag, one with none (another tool's).
    const hostBy = async (extra: Record<string, string>) => {
      const { stdout } = await run(hosts!.spawnCmd[0]!, [], { env: { ...process.env, ...hosts!.env, ...extra } });
      return JSON.parse(stdout.trim().split('\n').at(-1)!) as { name: string; ip: string };
    };
    const leak = await hostBy({ VMPOOL_SPAWN_ID: 'by-hand', VMPOOL_POOL_ID: vmm.poolId });
    const untagged = await hostBy({ VMPOOL_SPAWN_ID: 'by-hand-untagged', VMPOOL_POOL_ID: '' });
    expect(await namespaces(hosts!)).toContain(leak.name);

    await waitFor(async () => !(await namespaces(hosts!)).includes(leak.name), 40_000, 'the leaked host terminated');
    expect(await namespaces(hosts!)).toContain(untagged.name);
    expect(await terminateJobsFor(untagged.name)).toEqual([]);
    await run(hosts!.terminateCmd[0]!, [], { env: { ...process.env, ...hosts!.env, VMPOOL_VM_NAME: untagged.name } });
    const jobs = await terminateJobsFor(leak.name);
    expect(jobs).toHaveLength(1);
    expect(jobs[0]!.id).toMatch(new RegExp(`^leak-gnetns\\+${leak.name}\\+\\d+$`));
    expect(jobs[0]!.data).toEqual({ vmName: leak.name, reason: 'orphan', orphan: { group: 'netns', vmIp: leak.ip } });
    expect(await vmm.getAllVms().then((vms) => vms.map((v) => v.vmName))).not.toContain(leak.name);

    // The reconcile process logged its passes with counts, including the one that found the leak.
    const reconcile = workers.find((w) => w.type === 'reconcile')!;
    const passes = reconcile.lines.filter((l) => l.includes('"orphan pass"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(passes.length).toBeGreaterThan(1);
    expect(passes.some((p) => p.leaksTerminated === 1 && (p.counts as { unknownTerminated: number }).unknownTerminated === 1)).toBe(true);

    // The pool's own hosts were never taken for leaks or lost machines.
    const reasons = (await terminateQueue.getJobs([...ALL_STATES])).map((j) => j.data.reason as string);
    expect(reasons.filter((r) => r === 'orphan')).toHaveLength(1);
    expect(reasons).not.toContain('provider_lost');
    const warm = await waitFor(() => readyCleanVm(), 20_000, 'the warm VM, still serving');
    expect(await namespaces(hosts!)).toContain(warm.vmName);
  }, 60_000);
});
