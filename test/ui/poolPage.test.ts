import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/processes.js';
import { createWebKit, type WebKit } from '../http/fixtures.js';

// The pool page in real headless Chromium (Debian's /usr/bin/chromium, installed by .ci/run).
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts');

describe('pool page in Chromium', () => {
  let kit: WebKit;
  let browser: Browser;

  beforeAll(async () => {
    kit = await createWebKit('ui', undefined, { refreshMs: 500 });
    await kit.addReady('web-1', '10.7.0.1', 0);
    await kit.addReady('web-2', '10.7.0.2', 0);
    await kit.addReady('arm-1', '10.7.1.1', 1);
    await kit.vmm.addVmToPool('10.7.0.3', 'web-3', 0);
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
          user: tr.querySelector('.user')?.textContent?.trim(),
          task: tr.querySelector('.task')?.textContent?.trim(),
          checked: tr.querySelector('.checked')?.textContent?.trim(),
        })),
      );
      const expected = vms.filter((v) => v.group === g).sort((a, b) => a.vmName.localeCompare(b.vmName));
      expect(rows.map((r) => [r.name, r.state, r.ip])).toEqual(expected.map((v) => [v.vmName, v.state, v.vmIp]));
      for (const v of expected) {
        const row = rows.find((r) => r.name === v.vmName)!;
        expect(row.user).toBe(v.boundToUser ?? '-');
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
    await expect.poll(() => kit.redis.hget(kit.vmm.keys.vm('web-2'), 'held_by'), { timeout: 5_000 }).toBe('anonymous');
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
    await kit.vmm.addVmToPool('10.7.0.9', 'web-9', 0);
    await expect.poll(() => page.locator('tr[data-vm="web-9"]').count(), { timeout: 5_000 }).toBe(1);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'pool-page.png'), fullPage: true });
    await page.close();
  }, 60_000);
});
