import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchFingerprint, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// What the web process shows of a rollout: GET /groups' launch, the metrics, the pool page. An older
// config's process (v1) made two VMs; the web process and a newer one run v2.
const v2: ConfigInput = webTestConfig({ groups: [{ name: 'base', archs: ['x86_64'], image: 'fedora-42', max_vm_total: 6 }] });
const v1: ConfigInput = { ...v2, groups: [{ name: 'base', archs: ['x86_64'], image: 'fedora-41', max_vm_total: 6 }] };
const fp1 = launchFingerprint(parseConfig(v1).groups[0]!);
const fp2 = launchFingerprint(parseConfig(v2).groups[0]!);

let kit: WebKit;
let old: VmManager;
const v1Process = { startedAt: Date.now() - 60_000, processId: 'old-host:1:a' };

beforeAll(async () => {
  kit = await createWebKit('launch', v2);
  old = new VmManager(v1, { redis: kit.redis, prefix: kit.prefix });
  await old.publishLaunch('base', v1Process);
  for (const [i, name] of ['old-1', 'old-2'].entries()) {
    await old.registerSpawn('base', `s${i}`);
    await old.addVmToPool(`10.5.0.${i + 1}`, name, 'base', { spawnId: `s${i}` });
    await old.startVmCheck(name);
    await old.recordHealthCheckResult(name, true);
  }
  await kit.vmm.publishLaunch('base', { startedAt: Date.now(), processId: 'new-host:2:b' });
  // The v1 process runs a cycle again: it defers, and is listed.
  expect((await old.publishLaunch('base', v1Process)).status).toBe('superseded');
});

afterAll(async () => {
  await old.close();
  await kit.close();
});

describe('a group rolling to a new launch', () => {
  it('GET /groups gives its current fingerprint, the VMs on older ones and the deferring process', async () => {
    const res = await kit.fetch('/api/v1/groups');
    expect(res.status).toBe(200);
    const { groups } = (await res.json()) as { groups: { name: string; launch: unknown }[] };
    expect(groups.find((g) => g.name === 'base')!.launch).toMatchObject({
      configured: fp2,
      current: fp2,
      revision: 2,
      publishedBy: 'new-host:2:b',
      outdated: 2,
      deferring: [{ process: 'old-host:1:a', fingerprint: fp1 }],
    });
  });

  it('the metrics give the outdated count and the current fingerprint', async () => {
    const text = await (await kit.fetch('/metrics')).text();
    expect(text).toMatch(/^vmpool_group_vms_outdated\{group="base"\} 2$/m);
    expect(text).toContain(`vmpool_group_launch_info{group="base",fingerprint="${fp2}",revision="2",configured="${fp2}"} 1`);
  });

  it('the pool page shows the launch, the VMs on older ones and the process with another config', async () => {
    const html = await (await kit.fetch('/')).text();
    expect(html).toContain(`data-launch="${fp2}"`);
    expect(html).toMatch(/data-vms-outdated>2</);
    expect(html).toContain(`old-host:1:a: <code>${fp1}</code>`);
  });
});
