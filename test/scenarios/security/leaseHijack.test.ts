import { execFile } from 'node:child_process';
import { Job } from 'bullmq';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../../src/config/index.js';
import { startWebServer, type RunningWebServer } from '../../../src/http/server.js';
import { TaskConflict } from '../../../src/pool/types.js';
import { acquireJobId } from '../../../src/client/vmPoolClient.js';
import { AcquireFailures, acquireFailureOf, acquireJobOptions, type VmAssignment } from '../../../queues/acquire.js';
import { ROOT, nodeArgsFor, writeConfigFile } from '../../helpers/processes.js';
import { REDIS_URL } from '../../helpers/redis.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../../acquire/fixtures.js';

// Issue 10: a task belongs to one owner and sandbox. Issue 20: task ids are per owner. Another
// sandbox of alice, asking with alice's live taskId (served, or still waiting), never gets alice's
// VM, lease or job result: the client, the HTTP API and the CLI refuse with a task conflict, and so
// does the pool script for a job of any id. Owner mallory asking with the same task id asks for her
// own task: she never gets alice's VM, lease or job result, and is not refused either.
const configInput = { ...acquireConfig(), redis: { url: REDIS_URL }, web: { port: 0 } };
const alice = { owner: 'alice', sandbox: 'alice/proj', arch: 'x86_64' };
const mallory = { owner: 'alice', sandbox: 'alice/elsewhere', arch: 'x86_64' };
const otherOwner = { owner: 'mallory', sandbox: 'mallory/proj', arch: 'x86_64' };

let kit: AcquireKit;
let web: RunningWebServer;
let configFile: string;
let n = 0;
let taskId: string;

beforeAll(async () => {
  kit = await createAcquireKit('hijack', configInput);
  web = await startWebServer(parseConfig(configInput, {}), { prefix: kit.prefix, port: 0, acquireGraceMs: 2_000 });
  configFile = writeConfigFile(configInput);
});
afterAll(async () => {
  await web?.stop(2_000);
  await kit?.close();
});
beforeEach(() => {
  n += 1;
  taskId = `hijack-${n}`;
});

function httpAcquire(body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return fetch(new URL('/api/v1/acquire', web.url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then(async (r) => ({
    status: r.status,
    body: (await r.json()) as Record<string, unknown>,
  }));
}

function cliAcquire(owner: string, sandbox: string, task: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, VMPOOL_PREFIX: kit.prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' };
  const args = [...nodeArgsFor('src/cli/main.ts'), '--config', configFile, 'acquire', '--owner', owner, '--sandbox', sandbox, '--arch', 'x86_64', '--task-id', task, '--timeout', '20'];
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: ROOT, env, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** alice holds a VM under taskId. */
async function aliceServed(): Promise<VmAssignment> {
  await kit.addReady(`vm-${taskId}`, `10.9.0.${n}`);
  return kit.client.acquire({ ...alice, taskId });
}

/** alice's request for taskId waits in line (no VM ready); resolves with her assignment once one comes. */
async function aliceWaiting(): Promise<{ pending: Promise<VmAssignment> }> {
  const pending = kit.client.acquire({ ...alice, taskId, timeoutMs: 20_000 });
  await kit.untilWaiting(0, 1);
  return { pending };
}

/** alice's VM is still in_use under her lease, bound to her; then it leaves the pool (the next test starts empty). */
async function expectAliceHolds(a: VmAssignment): Promise<void> {
  expect(await kit.client.holds(a)).toBe(true);
  expect(await kit.ctx.vmm.getVmByName(a.vmName)).toMatchObject({ state: 'in_use', owner: 'alice', taskId });
  await kit.ctx.vmm.startVmTermination(a.vmName);
  await kit.ctx.vmm.removeVmFromPool(a.vmName);
}

function expectNothingOf(text: string, a: VmAssignment): void {
  expect(text).not.toContain(a.vmName);
  expect(text).not.toContain(a.leaseId);
}

describe('a task belongs to one owner and sandbox', { timeout: 60_000 }, () => {
  it('client: a served task is a TaskConflict for another sandbox of the owner', async () => {
    const a = await aliceServed();
    const err = await kit.client.acquire({ ...mallory, taskId }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskConflict);
    expect((err as TaskConflict).taskId).toBe(taskId);
    expectNothingOf((err as Error).message, a);
    // The same owner and sandbox reattach, as before.
    expect(await kit.client.acquire({ ...alice, taskId })).toMatchObject({ vmName: a.vmName, leaseId: a.leaseId });
    await expectAliceHolds(a);
  });

  it('client: a task whose request still waits is a TaskConflict for another sandbox, which never gets its VM', async () => {
    const { pending } = await aliceWaiting();
    const malloryAsks = kit.client.acquire({ ...mallory, taskId, timeoutMs: 20_000 }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 200));
    await kit.addReady(`vm-${taskId}`, `10.9.0.${n}`);
    const a = await pending;
    expect(await malloryAsks).toBeInstanceOf(TaskConflict);
    await expectAliceHolds(a);
  });

  it('the pool script refuses another sandbox under any job id, for a waiting and for a served task', async () => {
    const { pending } = await aliceWaiting();
    const custom = await kit.queue.add('acquire', { ...mallory, taskId, timeoutMs: 20_000 }, { ...acquireJobOptions, jobId: `custom-${taskId}-1` });
    await until(async () => (await custom.getState()) === 'failed', 'the custom job to fail');
    await kit.addReady(`vm-${taskId}`, `10.9.0.${n}`);
    const a = await pending;
    const late = await kit.queue.add('acquire', { ...mallory, taskId, timeoutMs: 20_000 }, { ...acquireJobOptions, jobId: `custom-${taskId}-2` });
    await until(async () => (await late.getState()) === 'failed', 'the second custom job to fail');
    for (const id of [custom.id!, late.id!]) {
      const job = (await Job.fromId(kit.queue, id))!;
      expect(acquireFailureOf(job)).toBe(AcquireFailures.TASK_CONFLICT);
      expect(job.returnvalue ?? null).toBeNull();
      expectNothingOf(job.failedReason, a);
    }
    // alice's job is hers alone.
    expect((await Job.fromId(kit.queue, acquireJobId(taskId, 'alice')))!.data.sandbox).toBe('alice/proj');
    await expectAliceHolds(a);
  });

  it('another owner with the same task id asks for her own task: never alice\'s VM, lease or job, and no conflict', async () => {
    const a = await aliceServed();
    await kit.addReady(`vm-${taskId}-m`, `10.9.1.${n}`);
    const m = await kit.client.acquire({ ...otherOwner, taskId });
    expect(m.vmName).toBe(`vm-${taskId}-m`);
    expect(m.leaseId).not.toBe(a.leaseId);
    expect((await Job.fromId(kit.queue, acquireJobId(taskId, 'mallory')))!.data.owner).toBe('mallory');
    expect((await Job.fromId(kit.queue, acquireJobId(taskId, 'alice')))!.data.owner).toBe('alice');
    // Each reattaches to its own.
    expect(await kit.client.acquire({ ...otherOwner, taskId })).toMatchObject({ vmName: m.vmName, leaseId: m.leaseId });
    expect(await kit.client.acquire({ ...alice, taskId })).toMatchObject({ vmName: a.vmName, leaseId: a.leaseId });
    // The pool's lookup by task id is per owner.
    expect((await kit.ctx.vmm.getVmByTaskId(taskId, 'mallory'))?.vmName).toBe(m.vmName);
    expect((await kit.ctx.vmm.getVmByTaskId(taskId, 'alice'))?.vmName).toBe(a.vmName);
    await kit.ctx.vmm.startVmTermination(m.vmName);
    await kit.ctx.vmm.removeVmFromPool(m.vmName);
    await expectAliceHolds(a);
  });

  it('HTTP: a served task is 409 task_conflict', async () => {
    const a = await aliceServed();
    const res = await httpAcquire({ ...mallory, taskId });
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({ error: 'conflict', details: { reason: 'task_conflict', taskId } });
    expectNothingOf(JSON.stringify(res.body), a);
    await expectAliceHolds(a);
  });

  it('HTTP: a task whose request still waits is 409 task_conflict', async () => {
    const { pending } = await aliceWaiting();
    const malloryAsks = httpAcquire({ ...mallory, taskId, timeoutMs: 20_000 });
    await new Promise((r) => setTimeout(r, 200));
    await kit.addReady(`vm-${taskId}`, `10.9.0.${n}`);
    const a = await pending;
    const res = await malloryAsks;
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({ error: 'conflict', details: { reason: 'task_conflict' } });
    expectNothingOf(JSON.stringify(res.body), a);
    await expectAliceHolds(a);
  });

  it('CLI: a served task exits 1 with a clear message', async () => {
    const a = await aliceServed();
    const res = await cliAcquire(mallory.owner, mallory.sandbox, taskId);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('belongs to another sandbox');
    expect(res.stdout).toBe('');
    expectNothingOf(res.stderr, a);
    await expectAliceHolds(a);
  });

  it('CLI: a task whose request still waits exits 1 with a clear message', async () => {
    const { pending } = await aliceWaiting();
    const malloryAsks = cliAcquire(mallory.owner, mallory.sandbox, taskId);
    await new Promise((r) => setTimeout(r, 1_500));
    await kit.addReady(`vm-${taskId}`, `10.9.0.${n}`);
    const a = await pending;
    const res = await malloryAsks;
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('belongs to another sandbox');
    expect(res.stdout).toBe('');
    expectNothingOf(res.stderr, a);
    await expectAliceHolds(a);
  });
});
