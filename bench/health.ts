/**
 * Health checks per second and client CPU per check, for one health process, against a real
 * OpenSSH sshd on loopback, at 1,000, 10,000 and 100,000 VMs in the pool (one pool per size, every
 * VM record points at the same sshd; the sizes measured in alternating rounds of 32 checks). Each check goes the health processor's own way (getVmByName, startVmCheck, the
 * group's ssh2 check with accept-new host keys kept in the VM record, recordHealthCheckResult),
 * 16 at a time. Beside it, in the same run: the OpenSSH client (`ssh`, BatchMode) run per check.
 *   npx tsx bench/health.ts          (BENCH_JSON=1: also one line `BENCH_RESULT <json>`)
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { Job } from 'bullmq';
import ssh2 from 'ssh2';
import { parseConfig } from '../src/config/index.js';
import { createHealthCheck } from '../src/health/index.js';
import { healthProcessor } from '../src/processors/health.js';
import type { Provider } from '../src/providers/types.js';
import { createJobContext } from '../src/runtime/worker.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { addReadyVms } from './lib/fill.js';
import { startPrivateRedis } from './lib/redisServer.js';
import { startBenchSshd, type BenchSshd } from './lib/sshd.js';

const run = promisify(execFile);
const SIZES = (process.env.BENCH_HEALTH_SIZES ?? '1000,10000,100000').split(',').map(Number);
const CONCURRENCY = 16;
const SSH2_CHECKS = Number(process.env.BENCH_HEALTH_CHECKS ?? 320);
const OPENSSH_CHECKS = Number(process.env.BENCH_HEALTH_OPENSSH_CHECKS ?? 48);
const TARGET_CPU_MS = 5;
const PREFIX = 'bench-health';

export interface HealthSizeResult {
  vms: number;
  ssh2: { checksPerSecond: number; cpuMsPerCheck: number; failed: number };
  openssh: { checksPerSecond: number; cpuMsPerCheck: number; failed: number };
}

/** What an ssh2 handshake with the bench's sshd chose, and whether ssh2's native crypto binding loaded. */
export interface Ssh2Negotiated {
  kex: string;
  serverHostKey: string;
  cipher: string;
  mac: string;
  nativeBinding: boolean;
}

export interface HealthResult {
  concurrency: number;
  negotiated: Ssh2Negotiated;
  /** Client CPU per connect + exec + close of a bare ssh2 Client (no pool, no processor): ssh2's own part. */
  bareSsh2CpuMsPerCheck: number;
  sizes: HealthSizeResult[];
  /** Checks per second one health process can do when client CPU is its limit (one core). */
  cpuBoundChecksPerSecond: number;
  processesFor10k: number;
  processesFor100k: number;
  targetCpuMs: number;
}

/** CPU (ms) of this process's children that have ended, from /proc/self/stat (cutime + cstime). */
function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields after the command: state is fields[0], so cutime (16) and cstime (17) are [13] and [14].
  const ticks = Number(fields[13]) + Number(fields[14]);
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

/** ssh2 Client: connect, exec `echo hello`, close; the negotiated algorithms through `onHandshake`. */
function bareSsh2Check(port: number, user: string, privateKey: string, onHandshake?: (n: Record<string, any>) => void): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = new ssh2.Client();
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      conn.end();
      resolve(ok);
    };
    if (onHandshake) conn.on('handshake', onHandshake);
    conn.on('ready', () =>
      conn.exec('echo hello', (err, stream) => {
        if (err) return finish(false);
        let out = '';
        stream.on('data', (d: Buffer) => (out += d.toString('utf8')));
        stream.stderr.on('data', () => {});
        stream.on('close', () => finish(out.trim() === 'hello'));
      }),
    );
    conn.on('error', () => finish(false));
    conn.on('close', () => finish(false));
    conn.connect({ host: '127.0.0.1', port, username: user, privateKey, readyTimeout: 60_000, hostVerifier: () => true });
  });
}

/** Runs `count` calls of fn, `CONCURRENCY` at a time; wall seconds. */
async function concurrently(count: number, fn: (i: number) => Promise<boolean>): Promise<{ seconds: number; failed: number }> {
  let next = 0;
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) {
        const i = next++;
        if (!(await fn(i))) failed++;
      }
    }),
  );
  return { seconds: (performance.now() - t0) / 1000, failed };
}

export async function benchHealth(): Promise<HealthResult> {
  const redisServer = await startPrivateRedis();
  let sshd: BenchSshd | undefined;
  try {
    sshd = await startBenchSshd('health');
    const { port, dir, user } = sshd;
    const config = parseConfig(
      {
        redis: { url: redisServer.url, prefix: PREFIX },
        groups: [
          {
            name: 'bench',
            max_vm_total: 200_000,
            // A loaded machine delays sshd's handshakes; a timeout here would measure the load, not the check.
            vm_ssh_check_timeout: 60,
            check: { type: 'ssh', user, port, private_key: join(dir, 'client_key'), known_hosts: join(dir, 'known_vms') },
          },
        ],
      },
      {},
    );
    const noProvider = {} as Provider; // the ssh check never asks the provider
    const job = { log: async () => 0 } as unknown as Job;
    // One pool per size, each under its own prefix, all filled first: the sizes are then measured
    // in alternating rounds, so that load from elsewhere on the machine falls on every size alike
    // (measured one after another, the sizes differed by up to 1.6x with the machine's load).
    const contexts = SIZES.map((size) =>
      createJobContext(config, { logger: discardingLogger(), prefix: `${PREFIX}-${size}`, providerFactory: () => noProvider, healthCheckFactory: createHealthCheck }),
    );
    // What the handshake chose (the client's defaults against OpenSSH's), and ssh2's native binding,
    // which its install script builds (denied in package.json allowScripts: not built here).
    const clientKey = readFileSync(join(dir, 'client_key'), 'utf8');
    let negotiated: Ssh2Negotiated | undefined;
    await bareSsh2Check(port, user, clientKey, (n) => {
      const nativeBinding = (createRequire(import.meta.url)('ssh2/lib/protocol/crypto.js') as { bindingAvailable: boolean }).bindingAvailable;
      negotiated = { kex: n.kex, serverHostKey: n.serverHostKey, cipher: n.cs.cipher, mac: n.cs.mac || '(implicit: AEAD)', nativeBinding };
    });
    if (!negotiated) throw new Error('no ssh2 handshake with the bench sshd');
    const sizes: HealthSizeResult[] = [];
    let bareSsh2CpuMsPerCheck: number;
    try {
      const checks = SIZES.map((size, k) => {
        const ctx = contexts[k]!;
        // Distinct VMs spread over the whole pool, so two checks never race for one VM.
        const vmAt = (i: number) => `vm-${(i * 7919) % size}`;
        return async (i: number) => {
          const r = await healthProcessor.process(job, { vmName: vmAt(i) }, ctx);
          if (!r.ok && process.env.BENCH_DEBUG) process.stderr.write(`${r.detail}\n`);
          return r.ok;
        };
      });
      for (const [k, size] of SIZES.entries()) {
        const ctx = contexts[k]!;
        process.stderr.write(`health: filling a pool of ${size} VMs...\n`);
        await ctx.vmm.markServerStart();
        await addReadyVms(ctx.vmm, { count: size, group: 'bench', ipOf: () => '127.0.0.1' });
        // Warm-up: key read, scripts, and the JIT.
        for (let i = 0; i < 64; i++) await checks[k]!(SSH2_CHECKS + i);
      }
      for (let i = 0; i < 64; i++) await bareSsh2Check(port, user, clientKey);
      process.stderr.write(`health: ${SSH2_CHECKS} ssh2 checks per size and bare, in rounds...\n`);
      const ROUND = 32;
      const cpuMs = SIZES.map(() => 0);
      const wall = SIZES.map(() => 0);
      const failed = SIZES.map(() => 0);
      let bareCpuMs = 0;
      const cpuOf = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;
      for (let done = 0; done < SSH2_CHECKS; done += ROUND) {
        for (const k of SIZES.keys()) {
          const cpu0 = process.cpuUsage();
          const r = await concurrently(ROUND, (i) => checks[k]!(done + i));
          cpuMs[k]! += cpuOf(process.cpuUsage(cpu0));
          wall[k]! += r.seconds;
          failed[k]! += r.failed;
        }
        // ssh2's own part of a check: bare connect + exec + close, the same concurrency.
        const cpu0 = process.cpuUsage();
        await concurrently(ROUND, () => bareSsh2Check(port, user, clientKey));
        bareCpuMs += cpuOf(process.cpuUsage(cpu0));
      }
      const rounds = Math.ceil(SSH2_CHECKS / ROUND) * ROUND;
      bareSsh2CpuMsPerCheck = bareCpuMs / rounds;

      for (const [k, size] of SIZES.entries()) {
        const known = join(dir, `known_hosts_openssh_${size}`);
        const children0 = childrenCpuMs();
        const opensshRun = await concurrently(OPENSSH_CHECKS, async () => {
          try {
            const { stdout } = await run(
              'ssh',
              [
                '-o', 'BatchMode=yes',
                '-o', 'StrictHostKeyChecking=accept-new',
                '-o', `UserKnownHostsFile=${known}`,
                '-o', 'IdentitiesOnly=yes',
                '-o', 'ConnectTimeout=10',
                '-i', join(dir, 'client_key'),
                '-p', String(port),
                `${user}@127.0.0.1`,
                'echo hello',
              ],
              { timeout: 20_000 },
            );
            return stdout.trim() === 'hello';
          } catch {
            return false;
          }
        });
        const childrenCpu = childrenCpuMs() - children0;
        sizes.push({
          vms: size,
          ssh2: { checksPerSecond: rounds / wall[k]!, cpuMsPerCheck: cpuMs[k]! / rounds, failed: failed[k]! },
          openssh: { checksPerSecond: OPENSSH_CHECKS / opensshRun.seconds, cpuMsPerCheck: childrenCpu / OPENSSH_CHECKS, failed: opensshRun.failed },
        });
      }
    } finally {
      await Promise.all(contexts.map((c) => c.close()));
    }
    const worstCpu = Math.max(...sizes.map((s) => s.ssh2.cpuMsPerCheck));
    const cpuBound = 1000 / worstCpu;
    return {
      concurrency: CONCURRENCY,
      negotiated,
      bareSsh2CpuMsPerCheck,
      sizes,
      cpuBoundChecksPerSecond: cpuBound,
      processesFor10k: Math.ceil(10_000 / 120 / cpuBound),
      processesFor100k: Math.ceil(100_000 / 120 / cpuBound),
      targetCpuMs: TARGET_CPU_MS,
    };
  } finally {
    await sshd?.stop();
    await redisServer.stop();
  }
}

export function healthTable(r: HealthResult): string {
  const rows = r.sizes.map((s) => [
    s.vms.toLocaleString('en-US'),
    s.ssh2.checksPerSecond.toFixed(0),
    s.ssh2.cpuMsPerCheck.toFixed(2),
    String(s.ssh2.failed),
    s.openssh.checksPerSecond.toFixed(0),
    s.openssh.cpuMsPerCheck.toFixed(1),
    String(s.openssh.failed),
  ]);
  return [
    markdownTable(['VMs', 'ssh2 checks/s', 'ssh2 CPU ms/check', 'ssh2 failed', 'OpenSSH checks/s', 'OpenSSH CPU ms/check', 'OpenSSH failed'], rows),
    '',
    `negotiated: kex ${r.negotiated.kex}, host key ${r.negotiated.serverHostKey}, cipher ${r.negotiated.cipher}, mac ${r.negotiated.mac}; ssh2 native binding ${r.negotiated.nativeBinding ? 'loaded' : 'not built'}`,
    `bare ssh2 (connect, exec, close; no pool): ${r.bareSsh2CpuMsPerCheck.toFixed(2)} ms client CPU per check`,
    `one health process, client CPU bound: ${r.cpuBoundChecksPerSecond.toFixed(0)} checks/s; ` +
      `10,000 VMs at 120 s (83/s): ${r.processesFor10k} process(es); 100,000 VMs (833/s): ${r.processesFor100k} process(es)`,
  ].join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = await benchHealth();
  console.log(`bench:health — one sshd on 127.0.0.1, concurrency ${CONCURRENCY}, health processor path (ssh2, host keys in the VM record) beside the OpenSSH client per check\n`);
  console.log(healthTable(result));
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify(result)}`);
}
