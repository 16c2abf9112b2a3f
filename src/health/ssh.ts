import { createHmac } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import ssh2 from 'ssh2';
import type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './types.js';

export interface SshCheckOptions {
  user: string;
  privateKeyPath: string;
  port: number;
  hostKeyPolicy: 'accept-new' | 'known_hosts';
  /** accept-new: the file vmpool keeps; known_hosts: an OpenSSH known_hosts file. */
  knownHostsPath: string;
  /** Default `echo hello`, expecting `hello`. */
  command?: string;
  expect?: string;
}

/** Where accept-new remembers host keys when no file is configured. */
export function defaultKnownVmsPath(): string {
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'vmpool', 'known_vms');
}

/**
 * accept-new store. One line per VM: `<vm name> <ip> <key type> <base64 key>`. Keyed by name and IP,
 * not IP alone, because providers reuse addresses: a new VM at an old IP has a new key, and that is
 * not an attack. Appends are single small writes, so concurrent checkers do not interleave; the first
 * line for a VM wins.
 */
export function lookupKnownVm(path: string, vmName: string, ip: string): string | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  for (const line of text.split('\n')) {
    const [name, addr, type, key] = line.trim().split(/\s+/);
    if (name === vmName && addr === ip && type && key) return `${type} ${key}`;
  }
  return null;
}

export function rememberKnownVm(path: string, vmName: string, ip: string, hostKey: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  appendFileSync(path, `${vmName} ${ip} ${hostKey}\n`, { mode: 0o600 });
}

/** Whether an OpenSSH known_hosts host field (comma list, or hashed |1|salt|hash) names this host. */
function hostFieldMatches(field: string, names: string[]): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    return names.some((n) => createHmac('sha1', Buffer.from(salt, 'base64')).update(n).digest('base64') === hash);
  }
  return field.split(',').some((pattern) => names.includes(pattern));
}

/**
 * Keys for a host in an OpenSSH known_hosts file: `ip` on port 22, `[ip]:port` otherwise. Exact
 * names and hashed entries are supported; wildcard patterns and @cert-authority lines are not.
 */
export function lookupKnownHosts(path: string, ip: string, port: number): string[] {
  const names = port === 22 ? [ip] : [`[${ip}]:${port}`];
  const keys: string[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const text = line.trim();
    if (!text || text.startsWith('#') || text.startsWith('@')) continue;
    const [hosts, type, key] = text.split(/\s+/);
    if (hosts && type && key && hostFieldMatches(hosts, names)) keys.push(`${type} ${key}`);
  }
  return keys;
}

/** `ssh-ed25519 AAAA...` from the raw key blob the server sent (it starts with the type as an SSH string). */
function keyLine(blob: Buffer): string {
  const len = blob.readUInt32BE(0);
  return `${blob.subarray(4, 4 + len).toString('latin1')} ${blob.toString('base64')}`;
}

/** Copr's check: SSH in, run `echo hello`, expect `hello`. Connect and command share one deadline. */
export class SshHealthCheck implements HealthCheck {
  readonly type = 'ssh';
  private key: Buffer | null = null;

  constructor(private readonly options: SshCheckOptions) {}

  check(target: HealthCheckTarget, { timeoutMs }: { timeoutMs: number }): Promise<HealthCheckResult> {
    const o = this.options;
    const command = o.command ?? 'echo hello';
    const expect = o.expect ?? 'hello';
    const where = `${o.user}@${target.vmIp}:${o.port}`;
    return new Promise<HealthCheckResult>((resolve) => {
      let done = false;
      let hostKeyProblem: string | null = null;
      const conn = new ssh2.Client();
      const finish = (ok: boolean, detail: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        conn.end();
        conn.destroy();
        resolve({ ok, detail: `ssh ${where}: ${detail}` });
      };
      const timer = setTimeout(() => finish(false, `timed out after ${timeoutMs / 1000}s`), timeoutMs);

      try {
        this.key ??= readFileSync(o.privateKeyPath);
      } catch (err) {
        finish(false, `cannot read private key ${o.privateKeyPath}: ${(err as Error).message}`);
        return;
      }

      const hostVerifier = (blob: Buffer): boolean => {
        try {
          const offered = keyLine(blob);
          if (o.hostKeyPolicy === 'known_hosts') {
            const known = lookupKnownHosts(o.knownHostsPath, target.vmIp, o.port);
            if (known.includes(offered)) return true;
            hostKeyProblem = known.length
              ? `host key ${offered.split(' ')[0]} does not match ${o.knownHostsPath}`
              : `host not in ${o.knownHostsPath}`;
            return false;
          }
          const known = lookupKnownVm(o.knownHostsPath, target.vmName, target.vmIp);
          if (known === null) {
            rememberKnownVm(o.knownHostsPath, target.vmName, target.vmIp, offered);
            return true;
          }
          if (known === offered) return true;
          hostKeyProblem = `host key changed for ${target.vmName} ${target.vmIp} (remembered in ${o.knownHostsPath})`;
          return false;
        } catch (err) {
          hostKeyProblem = `host key check failed: ${(err as Error).message}`;
          return false;
        }
      };

      conn.on('ready', () => {
        conn.exec(command, (err, stream) => {
          if (err) return finish(false, `exec failed: ${err.message}`);
          let out = '';
          stream.on('data', (d: Buffer) => {
            if (out.length < 4096) out += d.toString('utf8');
          });
          stream.stderr.on('data', () => {});
          stream.on('close', (code: number | null) => {
            const got = out.trim();
            if (code === 0 && got === expect) finish(true, `${JSON.stringify(command)} -> ${JSON.stringify(got)}`);
            else finish(false, `${JSON.stringify(command)} exited ${code} with ${JSON.stringify(got.slice(0, 200))}, expected ${JSON.stringify(expect)}`);
          });
        });
      });
      conn.on('error', (err: Error) => finish(false, hostKeyProblem ?? err.message));
      conn.on('close', () => finish(false, hostKeyProblem ?? 'connection closed'));
      try {
        conn.connect({
          host: target.vmIp,
          port: o.port,
          username: o.user,
          privateKey: this.key,
          readyTimeout: timeoutMs,
          hostVerifier,
          keepaliveInterval: 0,
        });
      } catch (err) {
        finish(false, (err as Error).message);
      }
    });
  }
}
