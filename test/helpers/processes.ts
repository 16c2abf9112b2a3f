import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { afterAll } from 'vitest';

export const ROOT = resolve(import.meta.dirname, '..', '..');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

let sourcesMtime: number | undefined;

/**
 * Node arguments that run a TypeScript entry (path relative to the repo, such as `workers/spawn.ts`):
 * its build in dist/ when that is newer than every source (`npm test` builds first; it starts much
 * faster), else the source through tsx.
 */
export function nodeArgsFor(entry: string): string[] {
  const built = join(ROOT, 'dist', entry.replace(/\.ts$/, '.js'));
  sourcesMtime ??= Math.max(...['src', 'queues', 'workers'].map((d) => newestMtime(join(ROOT, d))));
  if (existsSync(built) && statSync(built).mtimeMs >= sourcesMtime) return [built];
  return ['--import', 'tsx', join(ROOT, entry)];
}

/** How a process run to its end ended: its exit code or signal, and its output (stdout and stderr). */
export interface FinishedRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/** Runs a TypeScript entry of the repository as a real process to its end (killed after a minute). */
export function runEntry(entry: string, env: Record<string, string>, args: string[] = []): Promise<FinishedRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...nodeArgsFor(entry), ...args], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

const configDirs: string[] = [];
// Registered while the test file is collected (each file has its own copy of this module), so it
// runs after the file's own afterAll hooks, when its worker processes are gone.
afterAll(() => {
  for (const dir of configDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** Writes a config object as YAML into a fresh temp dir (removed after the test file) and returns the file path. */
export function writeConfigFile(config: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-'));
  configDirs.push(dir);
  const path = join(dir, 'vmpool.yaml');
  writeFileSync(path, stringify(config));
  return path;
}

export interface WorkerProcess {
  type: string;
  child: ChildProcess;
  /** Every line the process printed (NDJSON logs), for assertions and failure messages. */
  lines: string[];
  /** SIGTERM, then waits for exit; SIGKILL after the deadline. Resolves to the exit code. */
  stop(deadlineMs?: number): Promise<number | null>;
  /** SIGKILL at once, as a crash. */
  kill(): Promise<void>;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((res) => probe.listen(0, '127.0.0.1', res));
  const { port } = probe.address() as { port: number };
  await new Promise((res) => probe.close(res));
  return port;
}

export interface StartProcessOptions {
  /** Arguments after the entry (such as `--config FILE`). */
  args?: string[];
  /** The log text that means started (default: the worker's `"worker started"`). */
  ready?: string;
  /** Another checkout of vmpool, built, whose `dist/workers/<type>.js` runs (default: this one's, as nodeArgsFor says). */
  root?: string;
}

/**
 * Starts a real worker process (`workers/<type>.ts`, from dist/ or through tsx) and resolves once
 * it logged that its worker started (or options.ready).
 */
export async function startWorkerProcess(type: string, env: Record<string, string>, startTimeoutMs = 20_000, options: StartProcessOptions = {}): Promise<WorkerProcess> {
  const ready = options.ready ?? '"worker started"';
  const entry = options.root ? [join(options.root, 'dist', 'workers', `${type}.js`)] : nodeArgsFor(`workers/${type}.ts`);
  const child = spawn(process.execPath, [...entry, ...(options.args ?? [])], {
    cwd: options.root ?? ROOT,
    env: { ...process.env, LOG_LEVEL: 'info', VMPOOL_SHUTDOWN_DEADLINE_MS: '5000', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let buffered = '';
  const onData = (chunk: Buffer) => {
    buffered += chunk.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts.filter(Boolean));
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${type} worker did not start in ${startTimeoutMs} ms:\n${lines.join('\n')}`)), startTimeoutMs);
    const poll = setInterval(() => {
      if (lines.some((l) => l.includes(ready))) {
        clearTimeout(timer);
        clearInterval(poll);
        res();
      }
    }, 50);
    void exited.then((code) => {
      clearTimeout(timer);
      clearInterval(poll);
      rej(new Error(`${type} worker exited with ${code} before starting:\n${lines.join('\n')}`));
    });
  }).catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  return {
    type,
    child,
    lines,
    async stop(deadlineMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), deadlineMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Polls until fn returns a truthy value (tests only); fails with the last value after the timeout. */
export async function waitFor<T>(fn: () => Promise<T> | T, timeoutMs = 20_000, what = 'condition', intervalMs = 100): Promise<NonNullable<T>> {
  const until = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await fn();
    if (last) return last as NonNullable<T>;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The last lines each worker process printed, for failure messages. */
export function workerLogs(workers: WorkerProcess[], lines = 12): string {
  return workers.map((w) => `--- ${w.type} (pid ${w.child.pid}):\n${w.lines.slice(-lines).join('\n')}`).join('\n');
}

/** waitFor, with the workers' last log lines in the error. */
export async function waitForWithLogs<T>(workers: WorkerProcess[], fn: () => Promise<T> | T, timeoutMs: number, what: string): Promise<NonNullable<T>> {
  return waitFor(fn, timeoutMs, what).catch((err: Error) => {
    throw new Error(`${err.message}\n${workerLogs(workers)}`);
  });
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real `vmpool` CLI (dist/ or tsx, as nodeArgsFor) with `env` as its whole environment; never rejects. */
export function runVmpoolCli(args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<CliRun> {
  return new Promise((done) => {
    execFile(process.execPath, [...nodeArgsFor('src/cli/main.ts'), ...args], { cwd: ROOT, env, timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      done({ code, stdout, stderr });
    });
  });
}
