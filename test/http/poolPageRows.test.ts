import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POOL_PAGE_ROWS } from '../../src/http/poolPage.js';
import { createWebKit, type WebKit } from './fixtures.js';

/** The pool page shows every group's counts from the indexes, and its first POOL_PAGE_ROWS VMs with a link to the rest. */
describe('pool page rows', () => {
  let kit: WebKit;
  const total = POOL_PAGE_ROWS + 5;
  beforeAll(async () => {
    kit = await createWebKit('poolrows');
    for (let i = 0; i < total; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, total - i) }, (_, j) => kit.vmm.addVmToPool(`10.7.${(i + j) >> 8}.${(i + j) & 255}`, `r${String(i + j).padStart(4, '0')}`, 'base')));
    }
    await kit.vmm.holdVm('r0000', 'alice');
  });
  afterAll(async () => kit.close());

  it('counts every VM, lists the first rows and links the next page of GET /api/v1/vms', async () => {
    const res = await kit.fetch('/?fragment=1');
    expect(res.status).toBe(200);
    const html = await res.text();
    const section = html.slice(html.indexOf('data-group="0"'), html.indexOf('data-group="1"') > 0 ? html.indexOf('data-group="1"') : undefined);
    expect(section).toContain(`${total} VMs`);
    expect(section).toContain(`got_ip: <b>${total}</b>`);
    expect(section).toMatch(/held <b>1<\/b>/);
    expect(section.match(/<tr data-vm=/g)?.length).toBe(POOL_PAGE_ROWS);
    const last = `r${String(POOL_PAGE_ROWS - 1).padStart(4, '0')}`;
    const link = /<a data-more href="([^"]+)"/.exec(section)?.[1]?.replace(/&amp;/g, '&');
    expect(link).toBe(`api/v1/vms?group=base&cursor=${last}&limit=500`);
    const next = (await (await kit.fetch(`/${link}`)).json()) as { vms: { vmName: string }[]; next: string | null };
    expect(next.vms.map((v) => v.vmName)).toEqual(Array.from({ length: 5 }, (_, i) => `r${String(POOL_PAGE_ROWS + i).padStart(4, '0')}`));
    expect(next.next).toBeNull();
  });
});
