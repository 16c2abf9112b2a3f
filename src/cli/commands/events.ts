import { isAuditCursor, type AuditEvent } from '../../pool/audit.js';
import { isValidVmName } from '../../pool/types.js';
import type { RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

/** How often `vmpool events --follow` looks for new events. */
const FOLLOW_POLL_MS = 500;

export const registerEvents: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('events')
    .description('print the audit trail: every VM lifecycle event (spawned, ready, acquired, released, ...), oldest first')
    .option('--since <id|ms>', 'events after this event id, or at or after this time (epoch ms or ISO 8601)')
    .option('--vm <name>', 'only this VM')
    .option('--owner <owner>', 'only this owner')
    .option('--limit <n>', 'at most this many events (not with --follow)')
    .option('--follow', 'keep printing new events until interrupted')
    .option('--json', 'one JSON object per line')
    .action(async (opts: { since?: string; vm?: string; owner?: string; limit?: string; follow?: boolean; json?: boolean }) => {
      let since: string | undefined = opts.since;
      if (since !== undefined && !isAuditCursor(since)) {
        const at = Date.parse(since);
        if (Number.isNaN(at)) throw new CliError(`--since: not an event id, epoch ms or time: ${JSON.stringify(since)}`, ExitCodes.USAGE);
        since = String(at);
      }
      const limit = opts.limit === undefined ? Infinity : Number(opts.limit);
      if (opts.limit !== undefined && (!/^\d+$/.test(opts.limit) || limit < 1)) throw new CliError(`--limit must be a positive whole number, got ${JSON.stringify(opts.limit)}`, ExitCodes.USAGE);
      if (opts.follow && opts.limit !== undefined) throw new CliError('give --limit or --follow, not both', ExitCodes.USAGE);
      if (opts.vm !== undefined && !isValidVmName(opts.vm)) throw new CliError(`invalid VM name ${JSON.stringify(opts.vm)}`, ExitCodes.USAGE);
      await withPool(async (vmm) => {
        const show = (e: AuditEvent) => io.out(`${opts.json ? JSON.stringify(e) : eventLine(e)}\n`);
        let printed = 0;
        for (;;) {
          const page = await vmm.reader.auditEvents({ since, vm: opts.vm, owner: opts.owner, limit: Math.min(1000, limit - printed) });
          for (const e of page.events) show(e);
          printed += page.events.length;
          since = page.next ?? since;
          if (printed >= limit) return;
          if (page.more) continue;
          if (!opts.follow) return;
          if (await stopped(io.signal, FOLLOW_POLL_MS)) return;
        }
      }, { reads: true });
    });
};

/** Waits `ms`; true when the signal (or SIGINT/SIGTERM without one) said stop meanwhile. */
function stopped(signal: AbortSignal | undefined, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(true);
    const done = (value: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onStop);
      process.off('SIGINT', onStop);
      process.off('SIGTERM', onStop);
      resolve(value);
    };
    const onStop = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    if (signal) signal.addEventListener('abort', onStop);
    else {
      process.once('SIGINT', onStop);
      process.once('SIGTERM', onStop);
    }
  });
}

/** One audit event as a line: time, event, VM, owner/sandbox, then what else it carries. */
function eventLine(e: AuditEvent): string {
  const parts = [new Date(e.time).toISOString(), e.event.padEnd(19), e.vm];
  if (e.owner !== null) parts.push(`${e.owner}/${e.sandbox ?? ''}`);
  if (e.task !== null) parts.push(`task=${e.task}`);
  if (e.lease !== null) parts.push(`lease=${e.lease}`);
  if (e.reason !== null) parts.push(`reason=${JSON.stringify(e.reason)}`);
  for (const [k, v] of Object.entries(e.details)) parts.push(`${k}=${v}`);
  return parts.join('  ');
}
