import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../../src/config/index.js';
import { VmManager } from '../../../src/pool/vmManager.js';
import { freePort, startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../../helpers/redis.js';

// Issue 20, task squatting: task ids belong to their owner. A token bound to alice asks for bob's
// next task id and hangs up at once; bob's acquire for his own task then succeeds (not 409), and no
// answer names bob to alice or alice to bob. A finished task of alice's blocks bob no more than a
// withdrawn one. Real processes: the web process and an acquire worker, on real Redis.
const ALICE_TOKEN = 'alice-builder-token-0123456789';
const BOB_TOKEN = 'bob-builder-token-0123456789ab';
const prefix = uniquePrefix('squat');

let port: number;
let web: WorkerProcess | undefined;
let worker: WorkerProcess | undefined;
let vmm: VmManager;
const redis = connect();
let url: string;
let vmCount = 0;

async function addReady(): Promise<string> {
  vmCount += 1;
  const name = `squat-vm-${vmCount}`;
  await vmm.addVmToPool(`10.77.0.${vmCount}`, name, 'base');
  await vmm.startVmCheck(name);
  const { outcome } = await vmm.recordHealthCheckResult(name, true);
  if (outcome !== 'ok') throw new Error(`health check of ${name}: ${outcome}`);
  return name;
}

function api(path: string, token: string, init: { method?: string; json?: unknown; signal?: AbortSignal } = {}) {
  return fetch(new URL(path, url), {
    method: init.method ?? (init.json === undefined ? 'GET' : 'POST'),
    headers: { authorization: `Bearer ${token}`, ...(init.json === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(init.json === undefined ? {} : { body: JSON.stringify(init.json) }),
    ...(init.signal ? { signal: init.signal } : {}),
  });
}

const acquireBody = (owner: string, taskId: string, timeoutMs = 10_000) => ({ owner, sandbox: `${owner}/proj`, arch: 'x86_64', taskId, timeoutMs });

/** Requests waiting in the group's line. */
async function waitingCount(): Promise<number> {
  return redis.zcard(poolKeys(prefix).waiters('base'));
}

beforeAll(async () => {
  port = await freePort();
  const config = {
    redis: { url: REDIS_URL },
    web: {
      port,
      auth: {
        tokens: [
          { name: 'alice', token: ALICE_TOKEN, scopes: ['builder'], owners: ['alice'] },
          { name: 'bob', token: BOB_TOKEN, scopes: ['builder'], owners: ['bob'] },
        ],
      },
    },
    groups: [
      // No spawns: the test adds the VMs.
      { name: 'base', archs: ['x86_64'], max_vm_total: 10, max_vm_per_user: 4, vm_spawn_min_interval: 3600, provider: { type: 'command', spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'] }, check: { type: 'tcp', port: 1 } },
    ],
  } satisfies ConfigInput;
  const file = writeConfigFile(config);
  vmm = new VmManager(parseConfig(config, {}), { redis, prefix });
  await vmm.markServerStart();
  const env = { VMPOOL_CONFIG: file, VMPOOL_PREFIX: prefix };
  [web, worker] = await Promise.all([startWorkerProcess('web', env, 30_000, { ready: '"web listening"' }), startWorkerProcess('acquire', env, 30_000)]);
  url = `http://127.0.0.1:${port}`;
}, 60_000);

afterAll(async () => {
  await Promise.all([web?.stop(), worker?.stop()]);
  await vmm?.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('task squatting', { timeout: 60_000 }, () => {
  it("alice's withdrawn request for bob's next task id does not block bob, and no answer names the other owner", async () => {
    const taskId = '12345-fedora-41-x86_64';
    // alice asks for bob's next task id while no VM is ready, and hangs up as soon as it waits.
    const hangUp = new AbortController();
    const squat = api('/api/v1/acquire', ALICE_TOKEN, { json: acquireBody('alice', taskId), signal: hangUp.signal }).catch((e: unknown) => e);
    await waitFor(async () => (await waitingCount()) >= 1, 10_000, "alice's request in the line");
    hangUp.abort();
    await squat;
    await waitFor(async () => (await waitingCount()) === 0, 10_000, "alice's request withdrawn");

    const vm = await addReady();
    const res = await api('/api/v1/acquire', BOB_TOKEN, { json: acquireBody('bob', taskId) });
    const text = await res.text();
    expect(res.status, text).toBe(200);
    expect(JSON.parse(text)).toMatchObject({ vmName: vm });
    expect(text).not.toContain('alice');
    expect(await vmm.getVmRecord(vm)).toMatchObject({ state: 'in_use', owner: 'bob', taskId });

    // Each owner's lookup of the task id finds their own request only.
    const bobs = await api(`/api/v1/requests/${encodeURIComponent(taskId)}`, BOB_TOKEN);
    const bobsText = await bobs.text();
    expect(bobs.status, bobsText).toBe(200);
    expect(JSON.parse(bobsText)).toMatchObject({ owner: 'bob', state: 'assigned' });
    expect(bobsText).not.toContain('alice');
    // Her withdrawn job fails as cancelled once the acquire worker takes it up again.
    const alicesLookup = () => api(`/api/v1/requests/${encodeURIComponent(taskId)}`, ALICE_TOKEN);
    await waitFor(async () => (JSON.parse(await (await alicesLookup()).text()) as { state?: string }).state === 'failed', 10_000, "alice's withdrawn job failed");
    const alices = await alicesLookup();
    const alicesText = await alices.text();
    expect(alices.status, alicesText).toBe(200);
    expect(JSON.parse(alicesText)).toMatchObject({ owner: 'alice', state: 'failed', failure: { code: 'cancelled' } });
    expect(alicesText).not.toContain('bob');
    // Asking for bob's request by his owner or by his job id: not found, the same answer as for an
    // owner that has no request at all (only the id alice sent is echoed).
    for (const path of [`/api/v1/requests/${encodeURIComponent(taskId)}?owner=bob`, `/api/v1/requests/${encodeURIComponent(`acquire-bob+${taskId}`)}`]) {
      const other = await api(path, ALICE_TOKEN);
      const otherText = await other.text();
      expect(other.status, path).toBe(404);
      expect(otherText).not.toContain(vm);
      const nobody = await (await api(path.replaceAll('bob', 'carol'), ALICE_TOKEN)).text();
      expect(otherText.replaceAll('bob', 'carol')).toBe(nobody);
    }
    // alice asking again for that task id is her own task: no 409 naming bob, and not bob's VM.
    const again = await api('/api/v1/acquire', ALICE_TOKEN, { json: acquireBody('alice', taskId, 1_000) });
    const againText = await again.text();
    expect(again.status).not.toBe(409);
    expect(againText).not.toContain('bob');
    expect(againText).not.toContain(vm);
  });

  it("alice's finished task of the same id does not block bob", async () => {
    const taskId = '12346-fedora-41-x86_64';
    await addReady();
    const a = await api('/api/v1/acquire', ALICE_TOKEN, { json: acquireBody('alice', taskId) });
    const aText = await a.text();
    expect(a.status, aText).toBe(200);
    const first = (JSON.parse(aText) as { vmName: string }).vmName;
    expect(aText).not.toContain('bob');

    await addReady();
    const b = await api('/api/v1/acquire', BOB_TOKEN, { json: acquireBody('bob', taskId) });
    const bText = await b.text();
    expect(b.status, bText).toBe(200);
    expect((JSON.parse(bText) as { vmName: string }).vmName).not.toBe(first);
    expect(bText).not.toContain('alice');
    expect(await vmm.getVmRecord(first)).toMatchObject({ state: 'in_use', owner: 'alice', taskId });
  });
});
