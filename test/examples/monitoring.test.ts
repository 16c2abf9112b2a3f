import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT } from '../helpers/processes.js';
import { describeWithTools } from '../helpers/tools.js';
import { createWebKit, type WebKit } from '../http/fixtures.js';

// The alerting rules and the Grafana dashboard under examples/ are checked with Prometheus's own
// promtool and against the metrics a live web process serves.
const RULES = join(ROOT, 'examples', 'prometheus', 'vmpool-alerts.yml');
const DASHBOARD = join(ROOT, 'examples', 'grafana', 'vmpool-dashboard.json');

function promtool(args: string[], input?: string): { status: number | null; out: string } {
  const run = spawnSync('promtool', args, { input, encoding: 'utf8' });
  if (run.error) throw run.error;
  return { status: run.status, out: `${run.stdout}${run.stderr}` };
}

/** Metric family names an expression uses (histogram series named by their family). */
function metricNames(text: string): string[] {
  return [...new Set([...text.matchAll(/\bvmpool_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')))];
}

interface Dashboard {
  panels: { title: string; targets: { expr: string }[] }[];
}

describeWithTools('promtool', 'monitoring examples', () => {
  let kit: WebKit;
  let scrape: string;
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));

  beforeAll(async () => {
    kit = await createWebKit('monitoring');
    await kit.addReady('m1', '10.9.4.1', 0);
    const res = await kit.fetch('/metrics');
    expect(res.status).toBe(200);
    scrape = await res.text();
  });
  afterAll(async () => kit?.close());

  it('promtool accepts the alerting rules', () => {
    const { status, out } = promtool(['check', 'rules', RULES]);
    expect(status, out).toBe(0);
    expect(out).toMatch(/SUCCESS: 5 rules found/);
  });

  it('promtool finds nothing to lint in a live /metrics', () => {
    const { status, out } = promtool(['check', 'metrics'], scrape);
    expect(status, out).toBe(0);
    expect(out.trim()).toBe('');
  });

  it('the rules and the dashboard use only metrics that /metrics serves', () => {
    const served = new Set([...scrape.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
    expect(exprs.length).toBeGreaterThan(10);
    for (const name of [...metricNames(readFileSync(RULES, 'utf8')), ...metricNames(exprs.join('\n'))]) expect(served, name).toContain(name);
  });

  it('every dashboard query is valid PromQL', () => {
    // promtool parses each expression of a rules file: one recording rule per dashboard query.
    const rules = { groups: [{ name: 'dashboard', rules: exprs.map((expr, i) => ({ record: `dashboard:query_${i}`, expr: expr.replaceAll('$group', '.*') })) }] };
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-dashboard-'));
    try {
      const file = join(dir, 'rules.json');
      writeFileSync(file, JSON.stringify(rules));
      const { status, out } = promtool(['check', 'rules', file]);
      expect(status, out).toBe(0);
      expect(out).toContain(`SUCCESS: ${exprs.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
