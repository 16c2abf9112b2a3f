import { spawn } from 'node:child_process';
import type { Logger } from '../logger.js';
import { maskSecrets } from '../text/redact.js';

/** A hook command as configured: an argv array, or "path arg arg" split on whitespace. */
export type CommandLine = string | readonly string[];

/** Turns a configured command into argv. Never goes through a shell. */
export function toArgv(command: CommandLine): string[] {
  const argv = typeof command === 'string' ? command.trim().split(/\s+/) : [...command];
  if (argv.length === 0 || !argv[0]) throw new Error('empty hook command');
  return argv;
}

/** Bytes of a hook's output kept in memory (the tail), and lines sent to the job log (the head). */
export const HOOK_OUTPUT_KEEP_BYTES = 64 * 1024;
export const HOOK_LOG_MAX_LINES = 1000;
/** Characters of one output line that are logged; the rest of the line is cut. */
export const HOOK_LOG_LINE_MAX_CHARS = 1000;
/** Characters of a hook run's output logged in all (the job log and pino), whatever the lines. */
export const HOOK_LOG_MAX_CHARS = 64 * 1024;

/** The variables of vmpool's own environment that every hook gets (when set). */
export const HOOK_BASE_ENV = ['PATH', 'HOME', 'LANG', 'TZ'] as const;

/**
 * Why a variable may not be passed to hooks with `pass_env`, or null when it may: REDIS_URL (and
 * redis-cli's REDISCLI_AUTH) carry the Redis password, and VMPOOL_* are vmpool's own settings and
 * secrets (the hook's VMPOOL_* values are set by vmpool itself).
 */
export function passEnvProblem(name: string): string | null {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) return 'a variable name (letters, digits and _, not starting with a digit)';
  if (name === 'REDIS_URL' || name === 'REDISCLI_AUTH') return `a variable other than ${name}: it carries the Redis password, and hooks never get it`;
  if (name.startsWith('VMPOOL_')) return "a variable not named VMPOOL_*: those are vmpool's own settings and secrets (hooks get their VMPOOL_* values from vmpool; put a hook's setting in `env`)";
  return null;
}

/**
 * A hook's whole environment: PATH, HOME, LANG and TZ from vmpool's, the variables named in
 * passEnv (those that are set and allowed), then `values`. Nothing else of vmpool's environment
 * (REDIS_URL, tokens) reaches a hook.
 */
export function hookProcessEnv(
  values: Record<string, string>,
  passEnv: readonly string[] = [],
  parent: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const env: Record<string, string> = {};
  const base: readonly string[] = HOOK_BASE_ENV;
  for (const name of [...base, ...passEnv]) {
    const value = parent[name];
    // The config refuses bad pass_env names already; a caller that skipped it gets none either.
    if (value !== undefined && (base.includes(name) || passEnvProblem(name) === null)) env[name] = value;
  }
  return { ...env, ...values };
}

/** One output line as it may be logged or stored: known secrets masked, then cut. */
export function showHookLine(line: string, secrets: readonly string[] = []): string {
  const masked = maskSecrets(line, secrets);
  if (masked.length <= HOOK_LOG_LINE_MAX_CHARS) return masked;
  return `${masked.slice(0, HOOK_LOG_LINE_MAX_CHARS)}... (${masked.length - HOOK_LOG_LINE_MAX_CHARS} more characters not logged)`;
}

export interface HookRunOptions {
  argv: readonly string[];
  /** The hook's values (VMPOOL_*, the provider's env), on top of PATH, HOME, LANG, TZ and passEnv. */
  env: Record<string, string>;
  /** Names of vmpool's environment variables that the hook gets as well (config `pass_env`). */
  passEnv?: readonly string[];
  /** Known secrets (configSecrets), masked in every line that is logged or kept in `tail`. */
  secrets?: readonly string[];
  timeoutMs: number;
  /** Between SIGTERM and SIGKILL of the process group at the timeout. */
  killGraceMs: number;
  logger: Logger;
  /** What the hook is, for log lines, such as `spawn_cmd`. */
  label: string;
  log?: (line: string) => void | Promise<void>;
  /** Called with each stdout line as it arrives (even past the cap). */
  onStdoutLine?: (line: string) => void;
  /** Bytes of stdout kept (the tail); default HOOK_OUTPUT_KEEP_BYTES. */
  keepBytes?: number;
  /**
   * Aborted when the process stops: the whole group gets SIGTERM, then SIGKILL after
   * abortGraceMs (default 250 ms, so a stop stays well inside its deadline).
   */
  signal?: AbortSignal;
  abortGraceMs?: number;
}

export interface HookResult {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Killed because `signal` was aborted (the process stops). */
  aborted: boolean;
  /** Set when the program could not be started at all. */
  startError: Error | null;
  /** The last HOOK_OUTPUT_KEEP_BYTES of stdout, as printed (for parsing; mask before showing any of it). */
  stdout: string;
  /** The last lines of stdout and stderr together, for error messages (secrets masked, lines cut). */
  tail: string[];
  /** Stdout was longer than what was kept. */
  truncated: boolean;
}

/** Short human summary of how a hook ended, such as `exited with code 3` or `timed out after 2s`. */
export function describeEnd(result: HookResult, timeoutMs: number): string {
  if (result.startError) return `could not start: ${result.startError.message}`;
  if (result.aborted) return 'was stopped as the process shuts down (process group killed)';
  if (result.timedOut) return `timed out after ${timeoutMs / 1000}s (process group killed)`;
  if (result.code !== null) return `exited with code ${result.code}`;
  return `killed by ${result.signal}`;
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

/**
 * Runs a hook in its own process group, with a clean environment (hookProcessEnv). Each output
 * line goes to the job log and to pino, known secrets masked, each line cut at
 * HOOK_LOG_LINE_MAX_CHARS, at most HOOK_LOG_MAX_LINES lines and HOOK_LOG_MAX_CHARS in all. At the timeout the whole group gets SIGTERM, then
 * SIGKILL after the grace. Never rejects.
 */
export function runHook(options: HookRunOptions): Promise<HookResult> {
  const { argv, logger, label } = options;
  const keepBytes = options.keepBytes ?? HOOK_OUTPUT_KEEP_BYTES;
  return new Promise((resolve) => {
    let stdout = '';
    let truncated = false;
    let loggedLines = 0;
    let loggedChars = 0;
    let logCapped = false;
    const secrets = options.secrets ?? [];
    const tail: string[] = [];
    let timedOut = false;
    let aborted = false;
    let startError: Error | null = null;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];

    const child = spawn(argv[0]!, argv.slice(1), {
      env: hookProcessEnv(options.env, options.passEnv),
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so a timeout kills every process the hook started.
      detached: true,
    });

    const emitLine = (stream: 'stdout' | 'stderr', line: string) => {
      const shown = showHookLine(line, secrets);
      tail.push(shown);
      if (tail.length > 20) tail.shift();
      if (stream === 'stdout') options.onStdoutLine?.(line);
      if (logCapped) return;
      if (loggedLines < HOOK_LOG_MAX_LINES && loggedChars + shown.length <= HOOK_LOG_MAX_CHARS) {
        loggedLines++;
        loggedChars += shown.length;
        logger.info({ hook: label, stream, pid: child.pid }, shown);
        void Promise.resolve(options.log?.(`${label} ${stream}: ${shown}`)).catch(() => {});
        return;
      }
      logCapped = true;
      const why = loggedLines >= HOOK_LOG_MAX_LINES ? `${HOOK_LOG_MAX_LINES} lines` : `${HOOK_LOG_MAX_CHARS} characters`;
      logger.info({ hook: label, pid: child.pid }, `output beyond ${why} not logged`);
      void Promise.resolve(options.log?.(`${label}: output beyond ${why} not logged`)).catch(() => {});
    };

    const lineSplitter = (stream: 'stdout' | 'stderr') => {
      let partial = '';
      return {
        push(chunk: Buffer) {
          const text = chunk.toString('utf8');
          if (stream === 'stdout') {
            stdout += text;
            if (stdout.length > keepBytes) {
              stdout = stdout.slice(stdout.length - keepBytes);
              truncated = true;
            }
          }
          partial += text;
          // A line longer than the cap is cut, so memory stays bounded.
          if (partial.length > HOOK_OUTPUT_KEEP_BYTES) partial = partial.slice(partial.length - HOOK_OUTPUT_KEEP_BYTES);
          const lines = partial.split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) emitLine(stream, line.replace(/\r$/, ''));
        },
        flush() {
          if (partial) emitLine(stream, partial);
          partial = '';
        },
      };
    };
    const out = lineSplitter('stdout');
    const err = lineSplitter('stderr');
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));

    let killPending = false;
    const finish = () => {
      // After a timeout, the group gets its SIGKILL before we return, even if the leader exited.
      if (settled || killPending) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      out.flush();
      err.flush();
      child.stdout!.destroy();
      child.stderr!.destroy();
      resolve({
        code: exit?.code ?? null,
        signal: exit?.signal ?? null,
        timedOut,
        aborted,
        startError,
        stdout,
        tail,
        truncated,
      });
    };

    child.on('error', (e) => {
      startError = e;
      finish();
    });
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      // A process that escaped the group may hold the pipes open: don't wait for it long.
      timers.push(setTimeout(finish, 1000));
    });
    child.on('close', finish);

    // SIGTERM to the whole group, SIGKILL after the grace; returns once the group is gone (or given up).
    const killHook = (graceMs: number) => {
      killPending = true;
      killGroup(child.pid!, 'SIGTERM');
      timers.push(
        setTimeout(() => {
          killGroup(child.pid!, 'SIGKILL');
          killPending = false;
          if (exit) finish();
          // Give up on the pipes shortly after SIGKILL.
          else timers.push(setTimeout(finish, 2000));
        }, graceMs),
      );
    };

    timers.push(
      setTimeout(() => {
        if (exit || settled || killPending || child.pid === undefined) return;
        timedOut = true;
        logger.warn({ hook: label, pid: child.pid, timeoutMs: options.timeoutMs }, 'hook timed out, killing its process group');
        killHook(options.killGraceMs);
      }, options.timeoutMs),
    );

    const onAbort = () => {
      if (exit || settled || killPending || child.pid === undefined) return;
      aborted = true;
      logger.warn({ hook: label, pid: child.pid }, 'stopping: killing the hook\'s process group');
      killHook(options.abortGraceMs ?? 250);
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
    child.once('close', () => options.signal?.removeEventListener('abort', onAbort));
  });
}
