import { writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { Queue } from 'bullmq';
import { Command, CommanderError, Option } from 'commander';
import type { RedisConnection } from '../redis.js';
import { loadConfig, redactedConfig, type Config } from '../config.js';
import { configTemplate } from '../configTemplate.js';
import { assertBindAllowed } from '../http/auth.js';
import { createLogger, type Logger } from '../logger.js';
import { isAuditCursor, type AuditEvent } from '../pool/audit.js';
import { ALL_VM_STATES, isValidVmIp, isValidVmName, isVmState, type VmRecord, type VmState } from '../pool/types.js';
import { VmManager } from '../pool/vmManager.js';
import { groupSummaries, resolveGroup, withoutLease } from '../poolView.js';
import { RequestGroupsError, requestGroupIds } from '../acquire/requestGroups.js';
import { acquireRequestStatus, cancelAcquireRequest, type AcquireRequestStatus } from '../acquire/requests.js';
import { connectAnsweringRedis } from '../redis.js';
import { isScheduled, minReadyTimeline } from '../reconcile/minReady.js';
import { readSettings, resolveConfig, type Settings } from '../runtime/settings.js';
import { textTable } from '../text/table.js';
import { parseDuration, relativeTime } from '../time.js';
import { DEFAULT_ACQUIRE_TIMEOUT_MS, type AcquireRequestData } from '../../queues/acquire.js';
import { QueueNames } from '../../queues/names.js';
import { CliError, ExitCodes } from './exitCodes.js';
import { defaultIo, type CliIo } from './io.js';
import { runStart, START_TYPES } from './start.js';

function parseSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new CliError(`--timeout must be a positive number of seconds, got ${JSON.stringify(value)}`, ExitCodes.USAGE);
  return n;
}

/** Builds the `vmpool` program. Actions set process.exitCode; the caller exits. */
export function buildProgram(io: CliIo = defaultIo): Command {
  const program = new Command();
  program
    .name('vmpool')
    .description('Pool manager for disposable build VMs')
    .option('-c, --config <file>', 'config file (YAML); default: VMPOOL_CONFIG or the embedded local pool')
    .showHelpAfterError()
    .addHelpText('after', '\nExit codes: 0 ok, 1 error (refused by the VM state, RedisConnection unreachable), 2 usage or config error,\n3 VM not found, 4 no VM available.\nPool prefix: VMPOOL_PREFIX overrides redis.prefix.')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });

  const logger = (): Logger => createLogger('vmpool-cli', { ...io.env, LOG_LEVEL: io.env.LOG_LEVEL ?? 'warn' });

  // Read on first use, so that `config check` does not depend on the environment.
  let readEnv: Settings | undefined;
  const settings = (): Settings => (readEnv ??= readSettings(io.env));
  const config = (): Config => resolveConfig(program.opts().config, settings()).config;

  /** A VmManager on a connection that answered a PING, or CliError (exit 1) with the fix. */
  async function withPool<T>(fn: (vmm: VmManager, cfg: Config, redis: RedisConnection) => Promise<T>): Promise<T> {
    const cfg = config();
    const redis = await connectAnsweringRedis(cfg.redis).catch((err: Error) => {
      throw new CliError(err.message, ExitCodes.ERROR);
    });
    const vmm = new VmManager(cfg, { redis, prefix: settings().prefix, logger: logger() });
    try {
      return await fn(vmm, cfg, redis);
    } finally {
      await vmm.close();
      await redis.quit().catch(() => redis.disconnect());
    }
  }

  const print = (json: boolean, value: unknown, text: () => string) => io.out(`${json ? JSON.stringify(value, null, 2) : text()}\n`);

  program
    .command('start')
    .description(`run process types in this process (default: all of ${START_TYPES.join(', ')})`)
    .argument('[types...]', 'process types')
    .action(async (types: string[]) => {
      await runStart(types, program.opts().config, settings(), io);
    });

  program
    .command('info')
    .description("print the pool table per group (Copr's copr_get_vm_info)")
    .option('--json', 'groups and VMs as JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(async (vmm) => {
        if (opts.json) {
          const vms = await vmm.getAllVmRecords();
          print(true, { groups: await groupSummaries(vmm, vms), vms }, () => '');
        } else {
          io.out(`${await vmm.info()}\n`);
          for (const line of await breakerLines(vmm)) io.out(`${line}\n`);
        }
      });
    });

  const breakerCommand = program.command('breaker').description("the groups' spawn circuit breakers");
  breakerCommand
    .command('show', { isDefault: true })
    .description('print the open breakers (exit 0 either way)')
    .option('--json', 'as JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(async (vmm) => {
        const open = (await groupSummaries(vmm)).filter((g) => g.breaker !== null).map((g) => ({ group: g.name, ...g.breaker! }));
        const lines = await breakerLines(vmm);
        print(opts.json === true, open, () => (lines.length ? lines.join('\n') : 'every breaker is closed'));
      });
    });
  breakerCommand
    .command('reset')
    .description('close a group\'s breaker once what opened it is fixed (reconcile spawns again at its next cycle)')
    .argument('<group>', 'group name or id')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        await vmm.resetBreaker(group);
        io.out(`breaker of group ${cfg.groups[group]!.name} closed\n`);
      });
    });

  program
    .command('list')
    .description('list VMs')
    .option('--group <group>', 'group name or id')
    .addOption(new Option('--state <state>', 'VM state').choices([...ALL_VM_STATES]))
    .option('--owner <owner>', 'bound user')
    .option('--limit <n>', 'show at most n VMs (in name order)')
    .option('--json', 'as JSON')
    .action(async (opts: { group?: string; state?: string; owner?: string; limit?: string; json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const group = opts.group === undefined ? undefined : groupOf(cfg, opts.group);
        if (opts.state !== undefined && !isVmState(opts.state)) throw new CliError(`unknown state ${opts.state}`, ExitCodes.USAGE);
        const max = opts.limit === undefined ? Infinity : Number(opts.limit);
        if (opts.limit !== undefined && (!/^\d+$/.test(opts.limit) || max < 1)) throw new CliError(`--limit must be a whole number from 1, not ${opts.limit}`, ExitCodes.USAGE);
        const now = vmm.clock();
        // Page by page through the indexes, as GET /api/v1/vms does.
        const vms: VmRecord[] = [];
        let cursor: string | undefined;
        do {
          const page = await vmm.listVms({ group, state: opts.state as VmState | undefined, owner: opts.owner, cursor, limit: Math.min(500, max - vms.length) });
          vms.push(...page.vms);
          cursor = page.next ?? undefined;
        } while (cursor !== undefined && vms.length < max);
        print(opts.json === true, vms.map((v) => withoutLease(v)), () =>
          textTable(
            ['NAME', 'GROUP', 'STATE', 'IP', 'USER', 'SANDBOX', 'BUILDS', 'FAILS', 'LAST CHECK', 'TASK', 'HELD BY'],
            vms.map((v) => [
              v.vmName,
              cfg.groups[v.group]?.name ?? String(v.group),
              v.state,
              v.vmIp,
              v.boundToUser ?? '-',
              v.sandbox ?? '-',
              String(v.buildsCount),
              String(v.checkFails),
              relativeTime(v.lastHealthCheck, now),
              v.taskId ?? '-',
              v.heldBy ?? '-',
            ]),
          ),
        );
      });
    });

  program
    .command('acquire')
    .description('wait for a VM and print the assignment (its lease must be renewed or the VM is reclaimed)')
    .requiredOption('--owner <owner>', 'who builds')
    .requiredOption('--sandbox <sandbox>', 'build sandbox (VMs are reused within one owner and sandbox)')
    .option('--arch <arch>', 'any group that lists this arch')
    .option('--tag <tag...>', 'only groups that list every tag (with --arch, --group, or alone)')
    .option('--group <group...>', 'group names or ids, tried in order')
    .option('--timeout <seconds>', 'how long to wait', parseSeconds)
    .option('--task-id <id>', 'task id (re-running with the same id reattaches)')
    .option('--strict-group', 'only the groups asked for, never their fallback_groups')
    .option('--json', 'as JSON (default: shell assignments VM_NAME=... )')
    .action(async (opts: { owner: string; sandbox: string; arch?: string; group?: string[]; tag?: string[]; timeout?: number; taskId?: string; strictGroup?: boolean; json?: boolean }) => {
      if (opts.arch !== undefined && opts.group !== undefined) throw new CliError('give --arch or --group, not both', ExitCodes.USAGE);
      if (opts.arch === undefined && opts.group === undefined && opts.tag === undefined) throw new CliError('give --arch, --group or --tag', ExitCodes.USAGE);
      const cfg = config();
      const request: AcquireRequestData = {
        owner: opts.owner,
        sandbox: opts.sandbox,
        timeoutMs: Math.round((opts.timeout ?? DEFAULT_ACQUIRE_TIMEOUT_MS / 1000) * 1000),
        ...(opts.taskId ? { taskId: opts.taskId } : {}),
        ...(opts.arch !== undefined ? { arch: opts.arch } : {}),
        ...(opts.group !== undefined ? { groups: opts.group.map((g) => groupOf(cfg, g)) } : {}),
        ...(opts.tag !== undefined ? { tags: opts.tag } : {}),
        ...(opts.strictGroup ? { strictGroup: true } : {}),
      };
      try {
        requestGroupIds(cfg.groups, request);
      } catch (err) {
        if (err instanceof RequestGroupsError) throw new CliError(err.message.replace(/^unknown arch (.*): no group lists it$/, 'no group lists arch $1'), ExitCodes.USAGE);
        throw err;
      }
      await withPool(async (vmm, _cfg, redis) => {
        const { VmPoolClient } = await import('../client/index.js');
        const client = new VmPoolClient({
          redis,
          prefix: vmm.prefix,
          queue: (name) => vmm.queue(name),
          logger: logger(),
          graceMs: cliAcquireGraceMs(request.timeoutMs!, settings().acquireGraceMs),
        });
        try {
          const a = await client.acquire(request);
          print(opts.json === true, a, () =>
            [`VM_NAME=${a.vmName}`, `VM_IP=${a.vmIp}`, `GROUP=${a.group}`, `LEASE_ID=${a.leaseId}`, `LEASE_EXPIRES_AT=${a.leaseExpiresAt}`].join('\n'),
          );
        } finally {
          await client.close();
        }
      });
    });

  /** Lines for people about an acquire request (vmpool why, vmpool cancel). */
  const requestText = (r: AcquireRequestStatus): string => {
    const head = `request ${r.id}${r.taskId ? ` (task ${r.taskId})` : ''} of ${r.owner} (sandbox ${JSON.stringify(r.sandbox)}): ${r.state}`;
    if (r.state === 'assigned' && r.assignment) return `${head}: VM ${r.assignment.vmName} (${r.assignment.vmIp})`;
    if (r.state === 'failed' && r.failure) return `${head}: ${r.failure.reason}`;
    if (r.state === 'queued') return `${head}: no acquire worker took it yet`;
    if (!r.waiting) return head;
    const left = Math.max(0, Math.round((r.deadline - Date.now()) / 1000));
    const rows = r.waiting.groups.map((g) => [
      `${g.groupName}(${g.group})`,
      g.reason,
      g.position === null ? '-' : String(g.position),
      g.ownerPosition === null ? '-' : String(g.ownerPosition),
      String(g.waiting),
      `${g.ownerVms}/${g.maxVmPerUser}`,
      g.etaMs === undefined ? '-' : `${Math.ceil(g.etaMs / 1000)} s`,
    ]);
    return `${head}, waits because: ${r.waiting.reason} (gives up in ${left} s)\n${textTable(['GROUP', 'REASON', 'POSITION', 'OWNER POS', 'WAITING', 'OWNER VMS', 'ETA'], rows)}`;
  };

  program
    .command('why')
    .description('say where an acquire request stands and why it waits (by job id or task id)')
    .argument('<id>', 'acquire job id or task id')
    .option('--json', 'as JSON (GET /api/v1/requests/:id)')
    .action(async (id: string, opts: { json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const status = await acquireRequestStatus(vmm, cfg, id);
        if (!status) throw new CliError(`no acquire request ${JSON.stringify(id)}`, ExitCodes.NOT_FOUND);
        print(Boolean(opts.json), status, () => requestText(status));
      });
    });

  program
    .command('cancel')
    .description('withdraw a waiting or queued acquire request (by job id or task id); its job fails as cancelled')
    .argument('<id>', 'acquire job id or task id')
    .option('--json', 'the request afterwards, as JSON')
    .action(async (id: string, opts: { json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const outcome = await cancelAcquireRequest(vmm, cfg, id, `cancelled by ${userInfo().username} with vmpool cancel`);
        if (!outcome) throw new CliError(`no acquire request ${JSON.stringify(id)}`, ExitCodes.NOT_FOUND);
        if (!outcome.cancelled) throw new CliError(`acquire request ${outcome.status.id} is ${outcome.status.state} already; nothing withdrawn`, ExitCodes.ERROR);
        print(Boolean(opts.json), outcome.status, () => `withdrew ${requestText(outcome.status)}`);
      });
    });

  program
    .command('release')
    .description('release an in_use VM (it stays bound to its owner and sandbox)')
    .argument('<name>')
    .option('--lease-id <id>', 'only if the VM still holds this lease')
    .action(async (name: string, opts: { leaseId?: string }) => {
      await withPool(async (vmm) => {
        if (!(await vmm.releaseVm(name, opts.leaseId))) {
          const vm = await vmm.getVmRecord(name);
          throw new CliError(`VM ${name} is ${vm.state}, not in_use; nothing released`, ExitCodes.ERROR);
        }
        io.out(`released ${name}\n`);
      });
    });

  program
    .command('terminate')
    .description('request termination of a VM (reason operator)')
    .argument('<name>')
    .action(async (name: string) => {
      await withPool(async (vmm) => {
        if (!(await vmm.startVmTermination(name, null, 'operator'))) throw new CliError(`VM ${name} is already terminating`, ExitCodes.ERROR);
        io.out(`terminating ${name}\n`);
      });
    });

  program
    .command('down')
    .description('terminate every VM of the pool (or a group), reason operator, and wait until they are gone (terminate workers must run)')
    .option('--group <group>', 'group name or id')
    .option('--timeout <seconds>', `how long to wait (default ${DOWN_TIMEOUT_S})`, parseSeconds)
    .action(async (opts: { group?: string; timeout?: number }) => {
      await withPool(async (vmm, cfg) => {
        const group = opts.group === undefined ? undefined : groupOf(cfg, opts.group);
        const scope = group === undefined ? 'the pool' : `group ${cfg.groups[group]!.name}`;
        const inScope = async () => (await vmm.getAllVmRecords()).filter((v) => group === undefined || v.group === group);
        const vms = await inScope();
        if (vms.length === 0) {
          io.out(`no VMs in ${scope}\n`);
          return;
        }
        let requested = 0;
        for (const vm of vms) if (await vmm.startVmTermination(vm.vmName, null, 'operator')) requested += 1;
        io.out(`terminating ${vms.length} VM${vms.length === 1 ? '' : 's'} of ${scope} (${vms.length - requested} already terminating)\n`);
        const startCmd = '`vmpool start terminate`, or the Procfile\'s terminate';
        if ((await terminateWorkers(vmm)) === 0) io.err(`no terminate worker is connected: the VMs stay terminating until one runs (${startCmd})\n`);
        const names = new Set(vms.map((v) => v.vmName));
        const timeoutS = opts.timeout ?? DOWN_TIMEOUT_S;
        const until = Date.now() + timeoutS * 1000;
        let now = vms;
        for (;;) {
          const left = now.filter((v) => names.has(v.vmName)).length;
          const fresh = now.length - left;
          const more = fresh ? ` (${fresh} new VM${fresh === 1 ? '' : 's'} appeared meanwhile: reconcile keeps min_ready and demand; stop it first to empty ${scope})` : '';
          if (left === 0) {
            io.out(`all ${names.size} VM${names.size === 1 ? ' is' : 's are'} gone${more}\n`);
            return;
          }
          if (Date.now() >= until) {
            const why =
              left === names.size
                ? `no VM went away within ${timeoutS} s: are terminate workers running? (${startCmd})`
                : `${left} of ${names.size} VMs still there after ${timeoutS} s (vmpool list --state terminating; reconcile asks again after vm_terminating_timeout)`;
            throw new CliError(`${why}${more}`, ExitCodes.ERROR);
          }
          await new Promise((resolve) => setTimeout(resolve, Math.min(500, Math.max(0, until - Date.now()))));
          now = await inScope();
        }
      });
    });

  program
    .command('hold')
    .description('keep a VM out of acquisition (for debugging)')
    .argument('<name>')
    .option('--by <who>', 'who holds it', `${safeUser()}@cli`)
    .option('--for <duration>', 'end the hold after this long: 90s, 30m, 2h, 1d')
    .option('--until <time>', 'end the hold at this time (ISO 8601, such as 2026-12-24T18:00:00Z)')
    .option('--reason <text>', 'why it is held (shown with the holder)')
    .action(async (name: string, opts: { by: string; for?: string; until?: string; reason?: string }) => {
      if (opts.for !== undefined && opts.until !== undefined) throw new CliError('give --for or --until, not both', ExitCodes.USAGE);
      const duration = opts.for === undefined ? null : parseDuration(opts.for);
      if (opts.for !== undefined && duration === null) throw new CliError(`--for: not a duration: ${JSON.stringify(opts.for)} (use 90s, 30m, 2h or 1d)`, ExitCodes.USAGE);
      const untilAt = opts.until === undefined ? null : Date.parse(opts.until);
      if (untilAt !== null && Number.isNaN(untilAt)) throw new CliError(`--until: not a time: ${JSON.stringify(opts.until)}`, ExitCodes.USAGE);
      await withPool(async (vmm) => {
        const until = duration !== null ? vmm.clock() + duration : untilAt;
        if (!(await vmm.holdVm(name, opts.by, { until, reason: opts.reason ?? null }))) {
          const vm = await vmm.getVmRecord(name);
          throw new CliError(`VM ${name} is already held by ${vm.heldBy}`, ExitCodes.ERROR);
        }
        io.out(`held ${name}\n`);
      });
    });

  program
    .command('unhold')
    .description('end a hold; the VM can be acquired again')
    .argument('<name>')
    .action(async (name: string) => {
      await withPool(async (vmm) => {
        if (!(await vmm.unholdVm(name))) throw new CliError(`VM ${name} is not held`, ExitCodes.ERROR);
        io.out(`unheld ${name}\n`);
      });
    });

  program
    .command('add')
    .description('register an existing machine (state got_ip; reconcile health-checks it)')
    .argument('<ip>')
    .argument('<name>')
    .argument('<group>', 'group name or id')
    .action(async (ip: string, name: string, groupArg: string) => {
      if (!isValidVmIp(ip)) throw new CliError(`invalid IP address ${JSON.stringify(ip)}`, ExitCodes.USAGE);
      if (!isValidVmName(name)) throw new CliError(`invalid VM name ${JSON.stringify(name)}: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`, ExitCodes.USAGE);
      await withPool(async (vmm, cfg) => {
        const vm = await vmm.addVmToPool(ip, name, groupOf(cfg, groupArg));
        io.out(`added ${vm.vmName} (${vm.vmIp}) to group ${cfg.groups[vm.group]!.name}: ${vm.state}\n`);
      });
    });

  program
    .command('drain')
    .description('spawn nothing more for a group, at run time (as max_vm_total: 0); its VMs are still served and retired by their timeouts')
    .argument('<group>', 'group name or id')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        const name = cfg.groups[group]!.name;
        const vms = (await vmm.getAllVmRecords()).filter((v) => v.group === group && v.state !== 'terminating').length;
        if (await vmm.drainGroup(group)) {
          io.out(`group ${name} drained: nothing is spawned for it; its ${vms} VM${vms === 1 ? ' is' : 's are'} still served and retired by their timeouts (undo: vmpool undrain ${name})\n`);
        } else {
          io.out(`group ${name} was already drained (since ${new Date((await vmm.drainedSince(group))!).toISOString()})\n`);
        }
      });
    });

  program
    .command('undrain')
    .description('end a run-time drain: reconcile spawns for the group again')
    .argument('<group>', 'group name or id')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        const g = cfg.groups[group]!;
        const note = g.max_vm_total === 0 ? '; its config still sets max_vm_total: 0, so it spawns nothing' : '';
        if (await vmm.undrainGroup(group)) io.out(`group ${g.name} undrained${note}\n`);
        else io.out(`group ${g.name} was not drained${note}\n`);
      });
    });


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
      });
    });


  const configCommand = program.command('config').description('config file tools');
  configCommand
    .command('init')
    .description('write the embedded default as commented YAML to edit (stdout without FILE)')
    .argument('[file]')
    .option('--force', 'overwrite an existing file')
    .action((file: string | undefined, opts: { force?: boolean }) => {
      const text = configTemplate();
      if (file === undefined) {
        io.out(text);
        return;
      }
      try {
        writeFileSync(file, text, { flag: opts.force ? 'w' : 'wx' });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CliError(`${file} exists; not overwritten (use --force to replace it)`, ExitCodes.ERROR);
        throw new CliError(`cannot write ${file}: ${(err as Error).message}`, ExitCodes.ERROR);
      }
      io.err(`wrote ${file}; edit it, then check it with \`vmpool config check ${file}\`\n`);
    });
  configCommand
    .command('check')
    .description('validate a config file (exit 0 when valid, 2 otherwise)')
    .argument('<file>')
    .option('--json', 'print the config with defaults as JSON')
    .action((file: string, opts: { json?: boolean }) => {
      const cfg = loadConfig(file, {});
      // The same rule the web process applies at start, so that `ok` means it will start.
      try {
        assertBindAllowed(cfg.web);
      } catch (err) {
        throw new CliError(`${file}: ${(err as Error).message}`, ExitCodes.USAGE);
      }
      const summary = `${file}: ok (${cfg.groups.length} group${cfg.groups.length === 1 ? '' : 's'}: ${cfg.groups.map((g) => g.name).join(', ')})`;
      print(opts.json === true, redactedConfig(cfg), () => [summary, ...scheduleLines(cfg, io.now?.() ?? Date.now())].join('\n'));
    });

  return program;
}

/** For each group whose min_ready follows a schedule: its value over the next 24 hours (UTC). */
function scheduleLines(cfg: Config, now: number): string[] {
  const lines: string[] = [];
  for (const g of cfg.groups) {
    if (!isScheduled(g.min_ready)) continue;
    lines.push(`group ${g.name}: min_ready over the next 24 hours (UTC):`);
    for (const run of minReadyTimeline(g.min_ready, now, 24)) {
      const at = (ms: number) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
      lines.push(`  ${at(run.from)} - ${at(run.to)}  ${run.value}`);
    }
  }
  return lines;
}

/**
 * How long `vmpool acquire` waits for its job past the timeout asked for: the grace covers an
 * acquire worker that picks the job up late (all busy, or one that crashed and awaits stalled-job
 * recovery), but a person who asked for 5 s should not wait a minute when none runs. So it is
 * half the timeout, at least 2 s (a worker's start and one round trip), and at most
 * VMPOOL_ACQUIRE_GRACE_MS (60 s by default): `--timeout 5` gives up after 7.5 s, `--timeout 600`
 * after 660 s.
 */
export function cliAcquireGraceMs(timeoutMs: number, graceMs: number): number {
  return Math.min(graceMs, Math.max(2_000, Math.round(timeoutMs / 2)));
}

/** How often `vmpool events --follow` looks for new events. */
const FOLLOW_POLL_MS = 500;

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

/** How long `vmpool down` waits by default, in seconds. */
const DOWN_TIMEOUT_S = 120;

/** Terminate workers connected to the pool's Redis (BullMQ reads CLIENT LIST); undefined when that is refused. */
async function terminateWorkers(vmm: VmManager): Promise<number | undefined> {
  try {
    return await vmm.queue(QueueNames.TERMINATE).getWorkersCount();
  } catch {
    return undefined;
  }
}

function groupOf(cfg: Config, value: string): number {
  try {
    return resolveGroup(cfg, value);
  } catch (err) {
    throw new CliError((err as Error).message, ExitCodes.USAGE);
  }
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'operator';
  }
}

/** Runs the CLI and returns its exit code (commander's usage errors are 2). */
export async function runCli(argv: string[], io: CliIo = defaultIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return ExitCodes.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version are fine; help shown because no command was given is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return ExitCodes.OK;
      return ExitCodes.USAGE;
    }
    const { exitCodeOf } = await import('./exitCodes.js');
    io.err(`vmpool: ${(err as Error).message}\n`);
    return exitCodeOf(err);
  }
}

/** One line per group whose spawn circuit breaker is open. */
async function breakerLines(vmm: VmManager): Promise<string[]> {
  const now = vmm.clock();
  const lines: string[] = [];
  for (const g of await groupSummaries(vmm)) {
    const b = g.breaker;
    if (!b) continue;
    const until = b.openUntil === null ? `until \`vmpool breaker reset ${g.name}\`` : b.openUntil <= now ? 'probe due' : `probe in ${Math.ceil((b.openUntil - now) / 1000)} s`;
    lines.push(`group ${g.name}: spawn breaker OPEN (${b.errorClass}, ${b.failures} failures in a row${b.message ? `: ${b.message}` : ''}), ${until}`);
  }
  return lines;
}
