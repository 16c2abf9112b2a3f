import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT } from '../helpers/processes.js';
import { TOOLS, describeWithTools } from '../helpers/tools.js';
import { createWebKit, type WebKit } from './fixtures.js';

// The VM table at a laptop's width, with long owners, sandboxes, tasks and hold reasons.
const CHROMIUM = TOOLS.chromium.command;
const ARTIFACTS = join(ROOT, 'test-artifacts');

describeWithTools('chromium', 'pool page width', () => {
  let kit: WebKit;
  let browser: Browser;
  beforeAll(async () => {
    kit = await createWebKit('uiwidth', undefined, { refreshMs: 60_000 });
    await kit.addReady('web-1', '10.7.0.1', 0);
    await kit.addReady('web-2', '10.7.0.2', 0);
    await kit.vmm.acquireVm({ groups: [0], owner: 'alice-the-long-named-builder', sandbox: 'alice-the-long-named-builder/some-project-name--fedora-rawhide-x86_64', workerId: 'w', taskId: '12345678-fedora-rawhide-x86_64', chroot: 'fedora-rawhide-x86_64' });
    await kit.vmm.holdVm('web-2', 'operator-bob', { reason: 'debugging a failed build of the kernel package', until: Date.now() + 3_600_000 });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await kit?.close();
  });
  it('fits a 1,400 px wide screen: long values wrap in their columns, the buttons stay on screen', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    await page.goto(kit.url);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'width.png'), fullPage: true });
    // Neither the page nor a VM table (which may scroll inside its wrapper) is wider than the screen.
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(1400);
    const tables = await page.locator('div.vms').evaluateAll((divs) => divs.map((d) => ({ scroll: d.scrollWidth, client: d.clientWidth })));
    expect(tables.length).toBe(2);
    for (const t of tables) expect(t.scroll).toBeLessThanOrEqual(t.client);
    // A hold's end shows as relative time, its exact time on hover.
    expect(await page.locator('tr[data-vm="web-2"] td.held-by').getAttribute('title')).toMatch(/^until \d{4}-\d\d-\d\dT\d\d:\d\d/);
    // The last column (the buttons) is on screen.
    const box = await page.locator('tr[data-vm="web-2"] button[data-action="terminate"]').boundingBox();
    expect(box!.x + box!.width).toBeLessThanOrEqual(1400);
  }, 60_000);
});
