import { createHmac } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync, statSync } from 'node:fs';
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
  /**
   * accept-new: where host keys are kept, shared by every health replica (the pool's VM records,
   * through VmManager.rememberHostKey). Without it, the knownHostsPath file of this machine.
   */
  hostKeys?: HostKeyStore;
}

/** accept-new host keys kept beside the VM records (VmManager implements it). */
export interface HostKeyStore {
  /** Keeps `offered` unless a key is kept for the VM already; returns the key kept, or null for a VM not in the pool. */
  rememberHostKey(vmName: string, vmIp: string, offered: string): Promise<string | null>;
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
  const text = readKnownVmsText(path);
  for (const line of text.split('\n')) {
    const [name, addr, type, key] = line.trim().split(/\s+/);
    if (name === vmName && addr === ip && type && key) return `${type} ${key}`;
  }
  return null;
}

function readKnownVmsText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** The whole accept-new file, `<name> <ip>` -> key (the first line for a VM wins); empty when there is none. */
function readKnownVms(path: string): Map<string, string> {
  const known = new Map<string, string>();
  const text = readKnownVmsText(path);
  for (const line of text.split('\n')) {
    const [name, addr, type, key] = line.trim().split(/\s+/);
    if (name && addr && type && key && !known.has(`${name} ${addr}`)) known.set(`${name} ${addr}`, `${type} ${key}`);
  }
  return known;
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
  return parseKnownHosts(readFileSync(path, 'utf8')).lookup(ip, port);
}

export interface KnownHosts {
  lookup(ip: string, port: number): string[];
}

/**
 * A known_hosts file, indexed: plain host names in a map (O(1) per lookup), hashed entries in a
 * list (each needs an HMAC with its own salt).
 */
export function parseKnownHosts(text: string): KnownHosts {
  const byName = new Map<string, string[]>();
  const hashed: { field: string; key: string }[] = [];
  for (const line of text.split('\n')) {
    const entry = line.trim();
    if (!entry || entry.startsWith('#') || entry.startsWith('@')) continue;
    const [hosts, type, key] = entry.split(/\s+/);
    if (!hosts || !type || !key) continue;
    if (hosts.startsWith('|1|')) {
      hashed.push({ field: hosts, key: `${type} ${key}` });
      continue;
    }
    for (const name of hosts.split(',')) {
      const list = byName.get(name) ?? [];
      list.push(`${type} ${key}`);
      byName.set(name, list);
    }
  }
  return {
    lookup(ip, port) {
      const name = port === 22 ? ip : `[${ip}]:${port}`;
      return [...(byName.get(name) ?? []), ...hashed.filter((h) => hostFieldMatches(h.field, [name])).map((h) => h.key)];
    },
  };
}

/**
 * A file read again only when it changed (its mtime or size): the strict known_hosts policy looks
 * a host up on every check, and a farm's file has a line per machine.
 */
export class CachedFile<T> {
  private cached: { mtimeMs: number; size: number; value: T } | undefined;

  constructor(
    private readonly path: string,
    private readonly parse: (text: string) => T,
  ) {}

  get(): T {
    const st = statSync(this.path);
    if (!this.cached || this.cached.mtimeMs !== st.mtimeMs || this.cached.size !== st.size) {
      this.cached = { mtimeMs: st.mtimeMs, size: st.size, value: this.parse(readFileSync(this.path, 'utf8')) };
    }
    return this.cached.value;
  }
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
  private readonly knownHosts: CachedFile<KnownHosts>;
  /** The accept-new file of an older vmpool, read once: its keys move to the store as VMs are checked. */
  private legacyKnownVms: Map<string, string> | undefined;

  constructor(private readonly options: SshCheckOptions) {
    this.knownHosts = new CachedFile(options.knownHostsPath, parseKnownHosts);
  }

  /**
   * accept-new with a store: the key kept for the VM (the offered one on its first check). A key
   * the machine's old known_vms file has for the VM is kept instead of the offered one.
   */
  private async keptKey(target: HealthCheckTarget, offered: string): Promise<string | null> {
    this.legacyKnownVms ??= readKnownVms(this.options.knownHostsPath);
    const legacy = this.legacyKnownVms.get(`${target.vmName} ${target.vmIp}`);
    return this.options.hostKeys!.rememberHostKey(target.vmName, target.vmIp, legacy ?? offered);
  }

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

      const fileVerifier = (blob: Buffer): boolean => {
        try {
          const offered = keyLine(blob);
          if (o.hostKeyPolicy === 'known_hosts') {
            const known = this.knownHosts.get().lookup(target.vmIp, o.port);
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
      // accept-new with the pool's store: one script call, the same answer on every machine.
      const storeVerifier = (blob: Buffer, verify: (ok: boolean) => void): void => {
        const offered = keyLine(blob);
        this.keptKey(target, offered).then(
          (kept) => {
            if (kept === offered) return verify(true);
            hostKeyProblem = kept === null ? `${target.vmName} ${target.vmIp} is not in the pool` : `host key changed for ${target.vmName} ${target.vmIp} (kept in the pool)`;
            verify(false);
          },
          (err: Error) => {
            hostKeyProblem = `host key check failed: ${err.message}`;
            verify(false);
          },
        );
      };
      const hostVerifier = o.hostKeyPolicy === 'accept-new' && o.hostKeys ? storeVerifier : fileVerifier;

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
