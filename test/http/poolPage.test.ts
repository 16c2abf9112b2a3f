import { mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { ROOT } from '../helpers/processes.js';
import { TOOLS, describeWithTools } from '../helpers/tools.js';
import { createWebKit, type WebKit } from './fixtures.js';

// The pool page in real headless Chromium (Debian's /usr/bin/chromium, installed by .ci/run).
const CHROMIUM = TOOLS.chromium.command;
const ARTIFACTS = join(ROOT, 'test-artifacts');

describeWithTools('chromium', 'pool page in Chromium', () => {
  let kit: WebKit;
  let browser: Browser;

  beforeAll(async () => {
    kit = await createWebKit('ui', undefined, { refreshMs: 500 });
    await kit.addReady('web-1', '10.7.0.1', 0);
    await kit.addReady('web-2', '10.7.0.2', 0);
    await kit.addReady('arm-1', '10.7.1.1', 1);
    await kit.vmm.addVmToPool('10.7.0.3', 'web-3', 'base');
    await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/proj', workerId: 'w', taskId: 'task-42', chroot: 'fedora-rawhide-x86_64' });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await kit?.close();
  });

  it('shows the pool as it is, holds a VM through the UI, and refreshes itself', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    await page.goto(kit.url);
    expect(await page.title()).toBe('vmpool');

    // The table of each group matches the pool: every VM, its state, IP, user and task.
    const vms = await kit.vmm.getAllVms();
    for (const [g, group] of kit.config.groups.entries()) {
      const section = page.locator(`section.group[data-group="${g}"]`);
      await expect.poll(() => section.locator('h2').textContent()).toContain(group.name);
      const rows = await section.locator('tbody tr[data-vm]').evaluateAll((trs) =>
        trs.map((tr) => ({
          name: tr.getAttribute('data-vm'),
          state: tr.querySelector('.state')?.textContent?.trim(),
          ip: tr.querySelector('.ip')?.textContent?.trim(),
          user: tr.querySelector('.owner')?.textContent?.trim(),
          task: tr.querySelector('.task')?.textContent?.trim(),
          checked: tr.querySelector('.checked')?.textContent?.trim(),
        })),
      );
      const expected = vms.filter((v) => v.group === group.name).sort((a, b) => a.vmName.localeCompare(b.vmName));
      expect(rows.map((r) => [r.name, r.state, r.ip])).toEqual(expected.map((v) => [v.vmName, v.state, v.vmIp]));
      for (const v of expected) {
        const row = rows.find((r) => r.name === v.vmName)!;
        expect(row.user).toBe(v.owner ?? '-');
        if (v.taskId) expect(row.task).toContain(v.taskId);
        if (v.lastHealthCheck === null) expect(row.checked).toBe('-');
        else expect(row.checked).toMatch(/just now|seconds? ago/);
      }
      for (const state of ['ready', 'in_use', 'got_ip']) {
        const n = expected.filter((v) => v.state === state).length;
        expect(await section.locator(`[data-count-state="${state}"] b`).textContent()).toBe(String(n));
      }
      expect(await section.locator('[data-min-ready]').textContent()).toBe(String(group.min_ready));
    }

    // Hold web-2 through the UI, accepting the confirmation.
    let question = '';
    page.once('dialog', async (dialog) => {
      question = dialog.message();
      await dialog.accept();
    });
    await page.locator('tr[data-vm="web-2"] button[data-action="hold"]').click();
    await expect.poll(() => kit.redis.hget(kit.keys.vm('web-2'), 'held_by'), { timeout: 5_000 }).toBe('anonymous');
    expect(question).toContain('Hold VM web-2');
    expect((await kit.vmm.getVmRecord('web-2')).heldBy).toBe('anonymous');
    await expect.poll(() => page.locator('tr[data-vm="web-2"]').getAttribute('data-held'), { timeout: 5_000 }).toBe('1');
    expect(await page.locator('tr[data-vm="web-2"] button[data-action="unhold"]').count()).toBe(1);

    // Dismissing the confirmation changes nothing.
    page.once('dialog', (dialog) => void dialog.dismiss());
    await page.locator('tr[data-vm="web-3"] button[data-action="terminate"]').click();
    await new Promise((r) => setTimeout(r, 300));
    expect((await kit.vmm.getVmByName('web-3')).state).toBe('got_ip');

    // A change made elsewhere shows up without a reload.
    await kit.vmm.addVmToPool('10.7.0.9', 'web-9', 'base');
    await expect.poll(() => page.locator('tr[data-vm="web-9"]').count(), { timeout: 5_000 }).toBe(1);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'pool-page.png'), fullPage: true });
    await page.close();
  }, 60_000);

  it('unholds and terminates through the UI (its script sends JSON)', async () => {
    await kit.vmm.holdVm('arm-1', 'ops');
    const page = await browser.newPage();
    await page.goto(kit.url);
    page.on('dialog', (dialog) => void dialog.accept());
    await page.locator('tr[data-vm="arm-1"] button[data-action="unhold"]').click();
    await expect.poll(async () => (await kit.vmm.getVmRecord('arm-1')).heldBy, { timeout: 5_000 }).toBeNull();
    await expect.poll(() => page.locator('#message').textContent(), { timeout: 5_000 }).toBe('unhold arm-1: done');

    await page.locator('tr[data-vm="web-3"] button[data-action="terminate"]').click();
    await expect.poll(async () => (await kit.vmm.getVmRecord('web-3')).state, { timeout: 5_000 }).toBe('terminating');
    await expect.poll(() => page.locator('#message').textContent(), { timeout: 5_000 }).toBe('terminate web-3: done');
    await page.close();
  }, 60_000);

  it('drains and undrains a group through the UI, and draws its charts', async () => {
    await new VmMaster(kit.vmm).recordHistory();
    const page = await browser.newPage();
    await page.goto(kit.url);
    page.on('dialog', (dialog) => void dialog.accept());
    const arm = page.locator('section.group[data-group="1"]');
    await expect.poll(() => arm.locator('svg.chart[data-chart="states"] polyline').count(), { timeout: 5_000 }).toBeGreaterThan(0);
    await arm.locator('button[data-action="drain"]').click();
    await expect.poll(() => kit.vmm.drainedSince('arm'), { timeout: 5_000 }).not.toBeNull();
    await expect.poll(() => page.locator('#message').textContent(), { timeout: 5_000 }).toBe('drain arm: done');
    await expect.poll(() => arm.locator('.drained-badge').textContent(), { timeout: 5_000 }).toMatch(/^drained since .*ago\)$/);
    await arm.locator('button[data-action="undrain"]').click();
    await expect.poll(() => kit.vmm.drainedSince('arm'), { timeout: 5_000 }).toBeNull();
    await expect.poll(() => arm.locator('button[data-action="drain"]').count(), { timeout: 5_000 }).toBe(1);
    await page.close();
  }, 60_000);

  it('a page on another origin cannot hold or terminate VMs (form posts and JSON fetches)', async () => {
    // The attacker's page: another origin (another port), posting forms to the open API.
    const target = (path: string) => new URL(`api/v1/vms/web-1/${path}`, kit.url).href;
    const html = `<!doctype html><title>elsewhere</title>
<form id="hold" method="post" action="${target('hold')}" target="f1"><input name="by" value="attacker"></form>
<form id="plain" method="post" enctype="text/plain" action="${target('hold')}" target="f2"><input name='{"by":"x","y' value='":1}'></form>
<form id="terminate" method="post" action="${target('terminate')}" target="f3"></form>
<iframe name="f1"></iframe><iframe name="f2"></iframe><iframe name="f3"></iframe>`;
    const evil: Server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
    await new Promise<void>((resolve) => evil.listen(0, '127.0.0.1', resolve));
    const before = await kit.vmm.getVmRecord('web-1');
    const page = await browser.newPage();
    try {
      await page.goto(`http://127.0.0.1:${(evil.address() as AddressInfo).port}/`);
      const answers: number[] = [];
      page.on('response', (r) => {
        if (r.url().startsWith(target(''))) answers.push(r.status());
      });
      for (const form of ['hold', 'plain', 'terminate']) await page.evaluate((id) => (document.getElementById(id) as HTMLFormElement).submit(), form);
      await expect.poll(() => answers.length, { timeout: 5_000 }).toBe(3);
      expect(answers).toEqual([415, 415, 415]);
      // A cross-origin fetch with the JSON type needs a preflight, which the API never grants.
      const fetched = await page.evaluate(async (url) => {
        try {
          const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
          return `status ${res.status}`;
        } catch (err) {
          return `refused: ${String(err)}`;
        }
      }, target('terminate'));
      expect(fetched).toMatch(/^refused/);
      expect(await kit.vmm.getVmRecord('web-1')).toEqual(before);
      expect(before.heldBy).toBeNull();
    } finally {
      await page.close();
      await new Promise<void>((resolve) => evil.close(() => resolve()));
    }
  }, 60_000);
});
