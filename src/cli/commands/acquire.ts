import { RequestGroupsError, requestGroupIds } from '../../acquire/requestGroups.js';
import { DEFAULT_ACQUIRE_TIMEOUT_MS, type AcquireRequestData } from '../../../queues/acquire.js';
import { groupOf, parseSeconds, type CliContext, type RegisterCommand } from '../context.js';
import type { VmPoolClient } from '../../client/index.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerAcquire: RegisterCommand = (program, { config, settings, logger, withPool, print }) => {
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
      const cfg = config();
      // Nothing to choose from in a pool of one group: take it.
      let groups = opts.group?.map((g) => groupOf(cfg, g));
      if (opts.arch === undefined && groups === undefined && opts.tag === undefined) {
        if (cfg.groups.length !== 1) throw new CliError(`give --arch, --group or --tag (groups: ${cfg.groups.map((g) => g.name).join(', ')})`, ExitCodes.USAGE);
        groups = [cfg.groups[0]!.name];
      }
      const request: AcquireRequestData = {
        owner: opts.owner,
        sandbox: opts.sandbox,
        timeoutMs: Math.round((opts.timeout ?? DEFAULT_ACQUIRE_TIMEOUT_MS / 1000) * 1000),
        ...(opts.taskId ? { taskId: opts.taskId } : {}),
        ...(opts.arch !== undefined ? { arch: opts.arch } : {}),
        ...(groups !== undefined ? { groups } : {}),
        ...(opts.tag !== undefined ? { tags: opts.tag } : {}),
        ...(opts.strictGroup ? { strictGroup: true } : {}),
      };
      try {
        requestGroupIds(cfg.groups, request);
      } catch (err) {
        if (err instanceof RequestGroupsError) throw new CliError(err.message.replace(/^unknown arch (.*): no group lists it$/, 'no group lists arch $1'), ExitCodes.USAGE);
        throw err;
      }
      await withCliClient({ withPool, settings, logger }, request.timeoutMs!, async (client) => {
        const a = await client.acquire(request);
        print(opts.json === true, a, () =>
          [`VM_NAME=${a.vmName}`, `VM_IP=${a.vmIp}`, `GROUP=${a.group}`, `LEASE_ID=${a.leaseId}`, `LEASE_EXPIRES_AT=${a.leaseExpiresAt}`].join('\n'),
        );
      });
    });
};

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

/**
 * Runs fn with a VmPoolClient on the CLI's pool (its connection and queue handles, the config's
 * groups, the grace of cliAcquireGraceMs for `timeoutMs`), and closes the client after:
 * `vmpool acquire` and `vmpool acquire-set`.
 */
export async function withCliClient(
  ctx: Pick<CliContext, 'withPool' | 'settings' | 'logger'>,
  timeoutMs: number,
  fn: (client: VmPoolClient) => Promise<void>,
): Promise<void> {
  await ctx.withPool(async (vmm, cfg, redis) => {
    const { VmPoolClient } = await import('../../client/index.js');
    const client = new VmPoolClient({
      redis,
      prefix: vmm.prefix,
      queue: (name) => vmm.queue(name),
      logger: ctx.logger(),
      graceMs: cliAcquireGraceMs(timeoutMs, ctx.settings().acquireGraceMs),
      groups: cfg.groups,
    });
    try {
      await fn(client);
    } finally {
      await client.close();
    }
  });
}
