import type { AutoholdRule } from '../pool/autohold.js';
import { createHash } from 'node:crypto';
import type { VmRecord } from '../pool/types.js';
import { relativeTime } from '../time.js';
import type { GroupSummary } from '../poolView.js';
import type { HistorySample } from '../reconcile/history.js';
import { groupCharts } from './charts.js';

export const POOL_PAGE_REFRESH_MS = 5_000;

/** The page's icon: a small stack of machines. */
export const FAVICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect x="1" y="2" width="14" height="5" rx="1" fill="#3a6ea5"/>' +
  '<rect x="1" y="9" width="14" height="5" rx="1" fill="#5a8fc7"/><circle cx="4" cy="4.5" r="1" fill="#d7f5dd"/><circle cx="4" cy="11.5" r="1" fill="#d7f5dd"/></svg>';

const escapeHtml = (value: unknown): string =>
  String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const cell = (value: string | number | null | undefined, cls = '') =>
  `<td${cls ? ` class="${cls}"` : ''}>${value === null || value === undefined || value === '' ? '<span class="none">-</span>' : escapeHtml(value)}</td>`;

/**
 * A time as its relative form ("2 minutes ago"); the page's script adds the browser's local date,
 * and the title keeps the exact time.
 */
function timeCell(ms: number | null, now: number, cls: string): string {
  if (ms === null || !Number.isFinite(ms)) return cell(null, cls);
  const iso = new Date(ms).toISOString();
  return `<td class="${cls}"><time datetime="${iso}" data-ms="${ms}" title="${iso}">${escapeHtml(relativeTime(ms, now))}</time></td>`;
}

function taskText(vm: VmRecord): string | null {
  if (!vm.taskId && !vm.buildId && !vm.chroot) return null;
  return [vm.taskId, vm.buildId ? `build ${vm.buildId}` : null, vm.chroot].filter(Boolean).join(' · ');
}

function vmRow(vm: VmRecord, now: number): string {
  const held = vm.heldBy !== null;
  const terminating = vm.state === 'terminating';
  const holdButton = held
    ? `<button type="button" data-action="unhold" data-vm="${escapeHtml(vm.vmName)}">Unhold</button>`
    : `<button type="button" data-action="hold" data-vm="${escapeHtml(vm.vmName)}"${terminating ? ' disabled' : ''}>Hold</button>`;
  const terminateButton = `<button type="button" class="danger" data-action="terminate" data-vm="${escapeHtml(vm.vmName)}"${terminating ? ' disabled' : ''}>Terminate</button>`;
  const heldText = held
    ? [`${vm.heldBy} (${relativeTime(vm.heldSince, now)})`, vm.holdReason ? `: ${vm.holdReason}` : '', vm.heldUntil !== null ? `, until ${relativeTime(vm.heldUntil, now)}` : ''].join('')
    : null;
  return [
    `<tr data-vm="${escapeHtml(vm.vmName)}" data-state="${escapeHtml(vm.state)}"${held ? ' data-held="1" class="held"' : ''}>`,
    cell(vm.vmName, 'name'),
    `<td class="state"><span class="state-badge state-${escapeHtml(vm.state)}">${escapeHtml(vm.state)}</span></td>`,
    cell(vm.vmIp, 'ip'),
    cell(vm.owner, 'owner'),
    cell(vm.sandbox, 'sandbox'),
    cell(vm.buildsCount, 'builds num'),
    cell(vm.checkFails, `fails num${vm.checkFails > 0 ? ' warn' : ''}`),
    timeCell(vm.lastHealthCheck, now, 'checked'),
    cell(taskText(vm), 'task'),
    timeCell(vm.state === 'in_use' ? vm.leaseExpiresAt : null, now, 'lease'),
    vm.heldUntil !== null && heldText !== null
      ? `<td class="held-by" title="until ${new Date(vm.heldUntil).toISOString()}">${escapeHtml(heldText)}</td>`
      : cell(heldText, 'held-by'),
    `<td class="actions">${holdButton} ${terminateButton}</td>`,
    '</tr>',
  ].join('');
}

/** How target_wait sized the warm pool: its target, the measured rate and boot time. */
function targetWaitText(summary: GroupSummary): string {
  const t = summary.targetWait;
  if (!t) return '';
  const boot = t.bootMeasured ? `boot ${t.bootSeconds} s` : `boot ${t.bootSeconds} s (assumed until a VM is ready)`;
  return ` <span data-target-wait>(by target_wait ${escapeHtml(t.target)}: ${t.arrivalsPerMinute} requests/min, ${boot})</span>`;
}

/** The autohold rules with a count left (the VMs they hold show in their groups, held by autohold:<id>). */
function autoholdSection(rules: readonly AutoholdRule[]): string {
  if (rules.length === 0) return '';
  const rows = rules
    .map(
      (r) =>
        `<tr data-autohold="${r.id}"><td class="num">${r.id}</td><td>${escapeHtml(r.owner)}</td><td>${escapeHtml(r.sandbox)}</td><td>${escapeHtml(r.group)}</td><td class="num">${r.count}</td><td>${r.for === undefined ? 'until unheld' : `${r.for} s`}</td><td>${escapeHtml(r.by)}</td><td class="held-by">${escapeHtml(r.reason)}</td></tr>`,
    )
    .join('');
  return `<h2>Autohold rules <small>the VMs of the next failed builds that match are held</small></h2>\n<div class="vms"><table class="autoholds"><tr><th>id</th><th>owner</th><th>sandbox</th><th>group</th><th>count left</th><th>hold for</th><th>by</th><th>reason</th></tr>${rows}</table></div>\n`;
}

/** The group's spawns waiting for resources, if they do. */
function quotaFullText(summary: GroupSummary): string {
  const q = summary.quotaFull;
  if (!q) return '';
  const whose = q.limit === 'group' ? 'its max_resources' : `account ${escapeHtml(q.account ?? '?')}`;
  return `<p class="quota" data-quota-full="${escapeHtml(q.units.join(' '))}">spawns wait: quota full (${whose}: ${escapeHtml(q.units.join(', '))})</p>`;
}

/** The open circuit breaker of a group, if any. */
function breakerText(summary: GroupSummary, now: number): string {
  const b = summary.breaker;
  if (!b) return '';
  const until = b.openUntil === null ? 'until an operator runs <code>vmpool breaker reset</code>' : `probe ${b.openUntil <= now ? 'due now' : `in ${Math.ceil((b.openUntil - now) / 1000)} s`}`;
  return `<p class="breaker" data-breaker="${escapeHtml(b.errorClass)}">spawns stopped: circuit breaker open (${escapeHtml(b.errorClass)}, ${b.failures} failures in a row${b.message ? `: ${escapeHtml(b.message)}` : ''}), ${until}</p>`;
}

/** VM rows the pool page shows per group at first; the rest are a link to the next page of GET /api/v1/vms. */
export const POOL_PAGE_ROWS = 200;

/** The group's launch: its current fingerprint, the VMs on older ones, and replicas that run another config. */
function launchText(summary: GroupSummary): string {
  const l = summary.launch;
  if (l.current === null) return `\n<p class="launch">launch <code>${escapeHtml(l.configured)}</code> (not published yet: no reconcile cycle ran)</p>`;
  const outdated = `<b data-vms-outdated>${l.outdated}</b> VM${l.outdated === 1 ? '' : 's'} on older launches${l.outdated > 0 ? ' (rolling out)' : ''}`;
  const others = l.deferring.length
    ? ` · <span class="launch-deferring" data-launch-deferring="${l.deferring.length}">${l.deferring.length} process${l.deferring.length === 1 ? '' : 'es'} with another config (${l.deferring.map((d) => `${escapeHtml(d.process)}: <code>${escapeHtml(d.fingerprint)}</code>`).join(', ')}) decide nothing for this group</span>`
    : '';
  const mine = l.configured !== l.current ? ` · this process's config: <code>${escapeHtml(l.configured)}</code>` : '';
  return `\n<p class="launch" data-launch="${escapeHtml(l.current)}">launch <code>${escapeHtml(l.current)}</code> (revision ${l.revision}) · ${outdated}${mine}${others}</p>`;
}

function groupSection(summary: GroupSummary, vms: VmRecord[], now: number, history: readonly HistorySample[], next: string | null = null): string {
  const counts = Object.entries(summary.counts)
    .map(([state, n]) => `<span class="count state-${state}" data-count-state="${state}">${state}: <b>${n}</b></span>`)
    .join(' ');
  const limits =
    `max_vm_total <b>${summary.limits.max_vm_total}</b> · max_vm_per_user <b>${summary.limits.max_vm_per_user}</b>` +
    (summary.limits.owner_vm_limit < summary.limits.max_vm_per_user ? ` (<b>${summary.limits.owner_vm_limit}</b> by max_resources_per_owner)` : '') +
    ' · ' +
    `max_spawn_processes <b>${summary.limits.max_spawn_processes}</b>`;
  const warm =
    `warm pool: <b data-ready-clean>${summary.readyClean}</b> clean ready of min_ready <b data-min-ready>${summary.minReady}</b>${summary.minReadyScheduled ? ' (by schedule, now)' : ''}${targetWaitText(summary)} · ` +
    `demand <b>${summary.demand}</b> · spawns in flight <b>${summary.spawnsInFlight}</b> · held <b>${summary.held}</b>`;
  // Drained: spawns nothing; a run-time drain can be ended here, the config's max_vm_total: 0 cannot.
  const drainedText = summary.drainedSince !== null
    ? `drained since <time datetime="${new Date(summary.drainedSince).toISOString()}" data-ms="${summary.drainedSince}">${escapeHtml(relativeTime(summary.drainedSince, now))}</time>`
    : 'drained by its config (max_vm_total: 0)';
  const drain = summary.removedFromConfig
    ? `<p class="drained" data-removed="1"><span class="drained-badge">removed from config</span>: nothing is spawned; its VMs are served to requests that name it until they retire, and the group goes once it has none.</p>`
    : summary.drained
    ? `<p class="drained" data-drained="1"><span class="drained-badge">${drainedText}</span>: nothing is spawned; its VMs are still served and retired by their timeouts.${summary.drainedSince !== null ? ` <button type="button" data-action="undrain" data-group="${escapeHtml(summary.name)}">Undrain</button>` : ''}</p>`
    : `<p class="drained"><button type="button" data-action="drain" data-group="${escapeHtml(summary.name)}">Drain</button></p>`;
  const more = next === null
    ? ''
    : `\n<tr class="more"><td colspan="12">first ${vms.length} of ${summary.total} VMs · <a data-more href="api/v1/vms?group=${encodeURIComponent(summary.name)}&amp;cursor=${encodeURIComponent(next)}&amp;limit=500">next ${Math.min(500, Math.max(0, summary.total - vms.length))} (JSON, in name order)</a></td></tr>`;
  const rows = vms.length
    ? vms.map((vm) => vmRow(vm, now)).join('\n') + more
    : '<tr class="empty"><td colspan="12">no VMs in this group</td></tr>';
  return `<section class="group" data-group="${summary.id ?? ''}" data-group-name="${escapeHtml(summary.name)}">
<h2>${escapeHtml(summary.name)} <small>${summary.id === null ? 'removed from config' : `group ${summary.id}`}${summary.archs.length ? ` · ${escapeHtml(summary.archs.join(', '))}` : ''}${summary.tags.length ? ` · tags ${escapeHtml(summary.tags.join(', '))}` : ''} · ${summary.total} VM${summary.total === 1 ? '' : 's'}</small></h2>
<p class="counts">${counts}</p>
<p class="limits">${limits}<br>${warm}</p>${breakerText(summary, now)}${quotaFullText(summary)}${launchText(summary)}
${drain}
${groupCharts(history, now)}
<div class="vms"><table>
<thead><tr><th>Name</th><th>State</th><th>IP</th><th>Owner</th><th>Sandbox</th><th>Builds</th><th>Check fails</th><th>Last check</th><th>Task</th><th>Lease expires</th><th>Held by</th><th></th></tr></thead>
<tbody>
${rows}
</tbody>
</table></div>
</section>`;
}

/**
 * The refreshable part of the pool page: one section per group, with its charts of the last hour (history: samples per group, oldest first).
 * `next`: per group, the cursor after the rows given, when the group has more (a "more" link to GET /api/v1/vms).
 */
export function renderPoolFragment(
  prefix: string,
  summaries: GroupSummary[],
  vms: VmRecord[],
  now: number,
  history: ReadonlyMap<string, readonly HistorySample[]> = new Map(),
  next: ReadonlyMap<string, string | null> = new Map(),
  autoholds: readonly AutoholdRule[] = [],
): string {
  const sections = summaries.map((s) => groupSection(s, vms.filter((v) => v.group === s.name), now, history.get(s.name) ?? [], next.get(s.name) ?? null)).join('\n');
  return `${sections}\n${autoholdSection(autoholds)}<p class="updated" data-now="${now}">updated ${escapeHtml(new Date(now).toISOString())} · prefix ${escapeHtml(prefix)}</p>`;
}

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f7f8fa; }
header { display: flex; align-items: baseline; gap: 1.5rem; }
header nav a { margin-right: 1rem; }
h1 { margin: 0 0 .5rem; font-size: 1.5rem; }
h2 { margin: 1.5rem 0 .25rem; font-size: 1.15rem; }
h2 small { color: #667; font-weight: normal; }
p.counts .count { display: inline-block; padding: .05rem .5rem; margin-right: .25rem; border-radius: 1rem; background: #e8ebf0; }
p.limits { color: #445; margin: .3rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6eb; white-space: nowrap; vertical-align: top; }
/* Long values wrap inside their column, so the table fits a laptop screen; the wrapper scrolls as a last resort. */
div.vms { overflow-x: auto; }
td.owner, td.sandbox, td.task, td.held-by { white-space: normal; overflow-wrap: anywhere; }
td.owner { max-width: 10rem; } td.sandbox, td.task { max-width: 16rem; } td.held-by { max-width: 18rem; }
td.checked, td.lease { white-space: normal; min-width: 8rem; max-width: 10rem; }
td.actions { white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; }
td.warn { color: #b3261e; font-weight: 600; }
.none { color: #aab; }
tr.held { background: #fff8e1; }
.state-badge { padding: .05rem .45rem; border-radius: .3rem; background: #e8ebf0; font-family: ui-monospace, monospace; font-size: 12px; }
.state-ready { background: #d7f5dd; } .state-in_use { background: #dce8ff; } .state-check_health { background: #fff1c2; }
.state-check_health_failed { background: #ffd9d6; } .state-terminating { background: #e5e5e5; } .state-got_ip { background: #efe3ff; }
button { font: inherit; padding: .15rem .6rem; border: 1px solid #99a; border-radius: .3rem; background: #fff; cursor: pointer; }
button.danger { border-color: #c66; color: #a22; }
button:disabled { opacity: .4; cursor: default; }
main[data-read-only] button[data-action] { display: none; }
#message { min-height: 1.2rem; color: #235; }
#message.error { color: #b3261e; }
p.updated { color: #889; font-size: 12px; margin-top: 1rem; }
p.drained { margin: .2rem 0 .5rem; }
div.charts { display: flex; gap: 1rem; flex-wrap: wrap; margin: .3rem 0 .6rem; }
div.charts figure { margin: 0; }
div.charts figcaption { font-size: 11px; color: #556; }
p.charts.none { color: #889; font-size: 12px; }
.legend { border-left: 3px solid; padding-left: .25rem; margin-right: .4rem; }
.drained-badge { padding: .05rem .5rem; border-radius: .3rem; background: #ffe0b2; font-weight: 600; }
`;

// Refreshes the groups by fetching the fragment, and sends hold / unhold / terminate to the API.
// Relative URLs keep the page working behind a reverse proxy path.
const SCRIPT = `
const root = document.getElementById('pool');
const message = document.getElementById('message');
const refreshMs = Number(root.dataset.refreshMs);
function localizeTimes() {
  for (const t of root.querySelectorAll('time[data-ms]')) {
    t.textContent = new Date(Number(t.dataset.ms)).toLocaleString() + ' (' + t.textContent + ')';
  }
}
async function refresh() {
  try {
    const res = await fetch('?fragment=1', { headers: { accept: 'text/html' } });
    if (res.ok) {
      root.innerHTML = await res.text();
      localizeTimes();
    }
  } catch (err) { /* keep the last table; the next refresh tries again */ }
}
localizeTimes();
const questions = {
  hold: (n) => 'Hold VM ' + n + '? It will not be handed to builders until it is unheld.',
  unhold: (n) => 'Unhold VM ' + n + '? It can be acquired again.',
  terminate: (n) => 'Terminate VM ' + n + '? Its machine will be destroyed.',
  drain: (n) => 'Drain group ' + n + '? Nothing more is spawned for it; its VMs are still served.',
  undrain: (n) => 'Undrain group ' + n + '? Reconcile spawns for it again.',
};
root.addEventListener('click', async (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const action = button.dataset.action, name = button.dataset.vm || button.dataset.group;
  if (!confirm(questions[action](name))) return;
  const path = button.dataset.group !== undefined
    ? 'api/v1/groups/' + encodeURIComponent(name) + '/drain'
    : 'api/v1/vms/' + encodeURIComponent(name) + (action === 'terminate' ? '/terminate' : '/hold');
  const method = action === 'unhold' || action === 'undrain' ? 'DELETE' : 'POST';
  button.disabled = true;
  try {
    const res = await fetch(path, { method, headers: { 'content-type': 'application/json' }, body: method === 'POST' ? '{}' : undefined });
    const body = await res.json().catch(() => ({}));
    message.className = res.ok ? '' : 'error';
    message.textContent = res.ok ? action + ' ' + name + ': done' : action + ' ' + name + ' failed: ' + (body.message || res.status);
  } catch (err) {
    message.className = 'error';
    message.textContent = action + ' ' + name + ' failed: ' + err;
  }
  await refresh();
});
setInterval(refresh, refreshMs);
`;

/** The CSP source that lets the page's one inline script run (and nothing else inline). */
export const POOL_PAGE_SCRIPT_SOURCE = `'sha256-${createHash('sha256').update(SCRIPT).digest('base64')}'`;

export function renderPoolPage(
  prefix: string,
  summaries: GroupSummary[],
  vms: VmRecord[],
  now: number,
  refreshMs = POOL_PAGE_REFRESH_MS,
  history: ReadonlyMap<string, readonly HistorySample[]> = new Map(),
  next: ReadonlyMap<string, string | null> = new Map(),
  /** For a caller who may not change anything (a read token): the buttons are hidden. */
  readOnly = false,
  autoholds: readonly AutoholdRule[] = [],
): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vmpool</title>
<link rel="icon" href="favicon.svg" type="image/svg+xml">
<style>${STYLE}</style>
</head>
<body>
<header><h1>vmpool</h1><nav><a href="admin/queues">Queues (Bull Board)</a><a href="api/v1/openapi.json">API</a><a href="metrics">Metrics</a></nav></header>
<div id="message" role="status"></div>
<main id="pool" data-refresh-ms="${refreshMs}"${readOnly ? ' data-read-only' : ''}>
${renderPoolFragment(prefix, summaries, vms, now, history, next, autoholds)}
</main>
<script>${SCRIPT}</script>
</body>
</html>`;
}
