/**
 * A private OpenSSH sshd on 127.0.0.1 for the benchmark parts that check over SSH (bench/health.ts,
 * bench/checkOnAcquire.ts): fresh host and client keys in a temp dir, public key login of the
 * current user, a free port. `stop()` ends it and removes the dir.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './redisServer.js';

const run = promisify(execFile);
const SSHD = process.env.SSHD ?? '/usr/sbin/sshd';

export interface BenchSshd {
  port: number;
  /** The user the client key logs in as (this process's user). */
  user: string;
  /** The client's private key file. */
  clientKeyPath: string;
  /** A temp dir for the caller's files (removed by stop). */
  dir: string;
  stop(): Promise<void>;
}

function waitForPort(port: number, deadlineMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadlineMs) reject(new Error(`sshd did not listen on port ${port}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

/** Starts the sshd (`SSHD`, default /usr/sbin/sshd) and resolves once it listens. */
export async function startBenchSshd(name: string): Promise<BenchSshd> {
  const dir = mkdtempSync(join(tmpdir(), `vmpool-bench-${name}-`));
  let sshd: ReturnType<typeof spawn> | undefined;
  const stop = async () => {
    if (sshd && sshd.exitCode === null && sshd.signalCode === null) {
      const exited = new Promise((r) => sshd!.once('exit', r));
      sshd.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client_key')]);
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client_key.pub')));
    const port = await freePort();
    writeFileSync(
      join(dir, 'sshd_config'),
      [
        'ListenAddress 127.0.0.1',
        `Port ${port}`,
        `HostKey ${join(dir, 'host_key')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'PermitRootLogin prohibit-password',
        'StrictModes no',
        // 16 checks at once: the default MaxStartups (10:30:100) would drop some handshakes.
        'MaxStartups 200',
        'LogLevel ERROR',
        '',
      ].join('\n'),
    );
    await run('mkdir', ['-p', '/run/sshd']);
    sshd = spawn(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'inherit'] });
    await waitForPort(port, Date.now() + 10_000);
    return { port, user: userInfo().username, clientKeyPath: join(dir, 'client_key'), dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
