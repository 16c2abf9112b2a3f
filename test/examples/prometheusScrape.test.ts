import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT, freePort, waitFor } from '../helpers/processes.js';
import { describeWithTools } from '../helpers/tools.js';
import { createWebKit, webTestConfig, type WebKit } from '../http/fixtures.js';

// examples/prometheus/prometheus.yml, run by a real Prometheus against a web process that has only
// a read token for it: the scrape with the bearer token file succeeds.
const EXAMPLE = join(ROOT, 'examples', 'prometheus', 'prometheus.yml');
const READ_TOKEN = 'prometheus-read-token-0123456789';

interface ScrapeExample {
  global: { scrape_interval: string };
  rule_files: string[];
  scrape_configs: { job_name: string; authorization: { credentials_file: string }; static_configs: { targets: string[] }[] }[];
}

describeWithTools('promtool', 'the Prometheus scrape example', () => {
  let kit: WebKit;
  let dir: string;
  let prometheus: ChildProcess | undefined;

  beforeAll(async () => {
    kit = await createWebKit('scrape', webTestConfig({ web: { auth: { tokens: [{ name: 'prometheus', token: READ_TOKEN, scopes: ['read'] }] } } }));
    dir = mkdtempSync(join(tmpdir(), 'vmpool-test-prometheus-'));
  });
  afterAll(async () => {
    if (prometheus && prometheus.exitCode === null) {
      const exited = new Promise((r) => prometheus!.once('exit', r));
      prometheus.kill('SIGTERM');
      await exited;
    }
    await kit?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('scrapes /metrics with the read token from its credentials file', async () => {
    // The example as it is, pointed at this web process and a token file of ours.
    const config = parse(readFileSync(EXAMPLE, 'utf8')) as ScrapeExample;
    const job = config.scrape_configs.find((j) => j.job_name === 'vmpool')!;
    const tokenFile = join(dir, 'vmpool-token');
    writeFileSync(tokenFile, `${READ_TOKEN}\n`, { mode: 0o400 });
    job.authorization.credentials_file = tokenFile;
    job.static_configs = [{ targets: [new URL(kit.url).host] }];
    config.global.scrape_interval = '1s';
    config.rule_files = config.rule_files.map((f) => join(ROOT, 'examples', 'prometheus', f));
    const file = join(dir, 'prometheus.yml');
    writeFileSync(file, stringify(config));
    const check = spawnSync('promtool', ['check', 'config', file], { encoding: 'utf8' });
    expect(check.status, `${check.stdout}${check.stderr}`).toBe(0);

    // Without the token the web process refuses the scrape.
    expect((await fetch(new URL('metrics', kit.url))).status).toBe(401);

    const port = await freePort();
    let log = '';
    prometheus = spawn('prometheus', [`--config.file=${file}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    prometheus.stdout!.on('data', (c: Buffer) => (log += c.toString()));
    prometheus.stderr!.on('data', (c: Buffer) => (log += c.toString()));
    const target = await waitFor(
      async () => {
        const res = await fetch(`http://127.0.0.1:${port}/api/v1/targets`).catch(() => null);
        if (!res?.ok) return null;
        const body = (await res.json()) as { data: { activeTargets: { labels: { job: string }; health: string; lastError: string }[] } };
        const t = body.data.activeTargets.find((a) => a.labels.job === 'vmpool');
        return t && t.health !== 'unknown' ? t : null;
      },
      30_000,
      'the vmpool target scraped',
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${log.slice(-2000)}`);
    });
    expect(target.lastError).toBe('');
    expect(target.health).toBe('up');
  }, 60_000);
});
