import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { startWebServer, type RunningWebServer } from '../../src/http/server.js';
import { AcquireFailures, acquireJobOptions, legacyAcquireJobId } from '../../queues/acquire.js';
import { REDIS_URL } from '../helpers/redis.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../acquire/fixtures.js';
import { runVmpoolCli, writeConfigFile } from '../helpers/processes.js';

// GET /api/v1/requests/:id and DELETE /api/v1/requests/:id, and `vmpool why` / `vmpool cancel`:
// where a waiting acquire request stands, why it waits, and its withdrawal.
const configInput = { ...acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 1, max_vm_total: 4 }] }), redis: { url: REDIS_URL }, web: { port: 0 } };

let kit: AcquireKit;
let web: RunningWebServer;
const settled = <T>(p: Promise<T>) => p.then((value) => ({ value }), (error: Error) => ({ error }));

beforeAll(async () => {
  kit = await createAcquireKit('requests-api', configInput);
  web = await startWebServer(parseConfig(configInput, {}), { prefix: kit.prefix, port: 0, acquireGraceMs: 2_000 });
});
afterAll(async () => {
  await web?.stop(2_000);
  await kit?.close();
});

/** Runs the real `vmpool` CLI on this pool. */
async function runCli(args: string[], env: Record<string, string>): Promise<{ code: number; out: string }> {
  const run = await runVmpoolCli(args, { ...process.env, ...env });
  return { code: run.code, out: run.stdout + run.stderr };
}

const api = (path: string, init: RequestInit = {}) => fetch(new URL(`/api/v1${path}`, web.url), init);

describe('acquire requests', () => {
  it('GET /requests/:id says why a request waits, by task id or job id; DELETE withdraws it', async () => {
    await kit.addReady('r1', '10.50.0.1');
    await kit.client.acquire({ owner: 'erin', sandbox: 's', groups: [0] });
    await kit.addReady('r2', '10.50.0.2');
    const pending = settled(kit.client.acquire({ owner: 'erin', sandbox: 's', groups: [0], taskId: 'req-erin', timeoutMs: 30_000 }));
    await kit.untilWaiting(0, 1);
    let body: Record<string, unknown> = {};
    await until(async () => {
      const res = await api('/requests/req-erin');
      body = (await res.json()) as Record<string, unknown>;
      return res.status === 200 && body.state === 'waiting';
    }, 'the request waiting');
    expect(body).toMatchObject({
      id: 'acquire-erin+req-erin',
      taskId: 'req-erin',
      owner: 'erin',
      state: 'waiting',
      jobState: 'delayed',
      waiting: { reason: 'owner_limit', groups: [{ group: 'base', groupName: 'base', reason: 'owner_limit', ownerVms: 1, maxVmPerUser: 1 }] },
      assignment: null,
    });
    // The same by job id.
    expect(((await (await api('/requests/acquire-erin+req-erin')).json()) as { id: string }).id).toBe('acquire-erin+req-erin');
    expect((await api('/requests/no-such-task')).status).toBe(404);

    const del = await api('/requests/req-erin', { method: 'DELETE', headers: { 'content-type': 'application/json' } });
    expect(del.status).toBe(202);
    const outcome = await pending;
    expect('error' in outcome && outcome.error.message).toMatch(/cancelled by .* through the API/);
    const after = (await (await api('/requests/req-erin')).json()) as { state: string; failure: { code: string } };
    expect(after).toMatchObject({ state: 'failed', failure: { code: AcquireFailures.CANCELLED } });
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(0);
    expect((await kit.ctx.vmm.getVmByName('r2')).state).toBe('ready');
    // A finished request cannot be withdrawn.
    expect((await api('/requests/req-erin', { method: 'DELETE', headers: { 'content-type': 'application/json' } })).status).toBe(409);
  }, 30_000);

  it('task ids are per owner: a task id of several owners needs the owner; a job from before the upgrade is found by its task id', async () => {
    await kit.addReady('s1', '10.50.0.11');
    await kit.addReady('s2', '10.50.0.12');
    const f = await kit.client.acquire({ owner: 'frank', sandbox: 's', groups: [0], taskId: 'shared-1' });
    const g = await kit.client.acquire({ owner: 'gina', sandbox: 's', groups: [0], taskId: 'shared-1' });
    expect(f.vmName).not.toBe(g.vmName);
    const ambiguous = await api('/requests/shared-1');
    expect(ambiguous.status).toBe(409);
    const body = (await ambiguous.json()) as { details: { reason: string }; message: string };
    expect(body.details.reason).toBe('ambiguous_task');
    expect(body.message).not.toMatch(/frank|gina/);
    expect(await (await api('/requests/shared-1?owner=gina')).json()).toMatchObject({ id: 'acquire-gina+shared-1', owner: 'gina', state: 'assigned', assignment: { vmName: g.vmName } });
    expect((await api('/requests/shared-1?owner=nobody')).status).toBe(404);
    const env = { REDIS_URL, VMPOOL_PREFIX: kit.prefix };
    const cfg = ['--config', writeConfigFile(configInput)];
    const cliAmbiguous = await runCli([...cfg, 'why', 'shared-1'], env);
    expect(cliAmbiguous.code, cliAmbiguous.out).toBe(2);
    expect(cliAmbiguous.out).toContain('--owner');
    const cliFrank = await runCli([...cfg, 'why', 'shared-1', '--owner', 'frank', '--json'], env);
    expect(JSON.parse(cliFrank.out)).toMatchObject({ owner: 'frank', state: 'assigned' });
    // A request enqueued before task ids were per owner (acquire-<task id>).
    await kit.queue.add('acquire', { owner: 'hank', sandbox: 's', groups: [0], taskId: 'old-1', timeoutMs: 1 }, { ...acquireJobOptions, jobId: legacyAcquireJobId('old-1') });
    await until(async () => (await api('/requests/old-1')).status === 200, 'the old job found by its task id');
    expect(await (await api('/requests/old-1?owner=hank')).json()).toMatchObject({ id: 'acquire-old-1', owner: 'hank' });
    expect((await api('/requests/old-1?owner=ivy')).status).toBe(404);
    for (const a of [f, g]) await kit.client.release(a);
  }, 60_000);

  it('vmpool why and vmpool cancel print the same, by task id', async () => {
    const pending = settled(kit.client.acquire({ owner: 'erin', sandbox: 's', groups: [0], taskId: 'cli-erin', timeoutMs: 30_000 }));
    await kit.untilWaiting(0, 1);
    const env = { REDIS_URL, VMPOOL_PREFIX: kit.prefix };
    const cfg = ['--config', writeConfigFile(configInput)];
    let why = { code: -1, out: '' };
    await until(async () => {
      why = await runCli([...cfg, 'why', 'cli-erin'], env);
      return why.out.includes('waits because');
    }, 'vmpool why to show the wait');
    expect(why.code).toBe(0);
    expect(why.out).toMatch(/request acquire-erin\+cli-erin \(task cli-erin\) of erin .*: waiting, waits because: owner_limit/);
    expect(why.out).toMatch(/base\(0\)\s+owner_limit/);
    const json = await runCli([...cfg, 'why', 'cli-erin', '--owner', 'erin', '--json'], env);
    expect(JSON.parse(json.out)).toMatchObject({ state: 'waiting', waiting: { reason: 'owner_limit' } });
    const cancel = await runCli([...cfg, 'cancel', 'cli-erin', '--owner', 'erin'], env);
    expect(cancel.code).toBe(0);
    expect(cancel.out).toMatch(/^withdrew request acquire-erin\+cli-erin/);
    const outcome = await pending;
    expect('error' in outcome && outcome.error.message).toMatch(/cancelled by .* with vmpool cancel/);
    expect((await runCli([...cfg, 'why', 'nothing-here'], env)).code).toBe(3);
    expect((await runCli([...cfg, 'cancel', 'cli-erin'], env)).code).toBe(1);
  }, 60_000);
});
