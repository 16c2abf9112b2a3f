import type { Config } from '../config/index.js';
import { textTable } from './table.js';
import { relativeTime } from '../time.js';
import type { VmDescriptor } from '../pool/types.js';

/**
 * Copr's copr_get_vm_info table: one block per group (the config's in its order, then the groups
 * removed from it that still have VMs), times relative to now. drainedSince: the groups drained at
 * run time (`vmpool drain`), group name -> epoch ms.
 */
export function formatPoolInfo(config: Config, vms: readonly VmDescriptor[], now: number, drainedSince: ReadonlyMap<string, number> = new Map()): string {
  const blocks: string[] = [];
  const configured = config.groups.map((g) => g.name);
  const removed = [...new Set(vms.map((v) => v.group))].filter((name) => !configured.includes(name)).sort();
  for (const group of [...configured, ...removed]) {
    const index = configured.indexOf(group);
    const g = config.groups[index];
    const inGroup = vms.filter((v) => v.group === group);
    const since = drainedSince.get(group);
    const drained = since !== undefined ? `, drained ${relativeTime(since, now)} (vmpool undrain ${g?.name ?? group})` : g?.max_vm_total === 0 ? ', drained (max_vm_total: 0)' : '';
    const title = g
      ? `Group ${index} (${group}, archs: ${g.archs.join(', ') || '-'}): ${inGroup.length} VMs, max ${g.max_vm_total}${drained}`
      : `Group ${group} (removed from config, draining): ${inGroup.length} VMs`;
    const rows = inGroup.map((v) => [
      v.vmName,
      v.vmIp,
      v.state,
      String(v.checkFails),
      relativeTime(v.lastHealthCheck, now),
      v.owner ?? '-',
      v.sandbox ?? '-',
      String(v.buildsCount),
      v.taskId ? `${v.taskId}${v.buildId ? ` (build ${v.buildId}${v.chroot ? `, ${v.chroot}` : ''})` : ''}, since ${relativeTime(v.inUseSince, now)}` : '-',
    ]);
    const body = rows.length
      ? textTable(['name', 'ip', 'state', 'check fails', 'last check', 'owner', 'sandbox', 'builds', 'task'], rows, { rule: true })
      : '(no VMs)';
    blocks.push(`${title}\n${body}`);
  }
  return blocks.join('\n\n');
}
