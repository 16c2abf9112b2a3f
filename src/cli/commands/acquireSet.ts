import { RequestGroupsError, requestGroupIds } from '../../acquire/requestGroups.js';
import type { Config } from '../../config/index.js';
import { DEFAULT_ACQUIRE_TIMEOUT_MS, MAX_SET_ITEMS, type AcquireSetItemData, type AcquireSetRequestData } from '../../../queues/acquire.js';
import { groupOf, parseSeconds, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';
import { withCliClient } from './acquire.js';

/** The keys of a `--vm` spec, and the spellings each takes. */
const SPEC_KEYS: Record<string, 'group' | 'arch' | 'tags' | 'count'> = { group: 'group', groups: 'group', arch: 'arch', tag: 'tags', tags: 'tags', count: 'count' };

const SPEC_HELP = 'give key=value fields: group=G[,G...] (names or ids, tried in order) or arch=A, and/or tags=T[,T...], and count=N; e.g. --vm group=base --vm arch=x86_64,tags=gpu,count=2';

/**
 * The VMs one `--vm` spec asks for: comma-separated `key=value` fields, where a value without a key
 * continues the list of the field before it (`group=a,b,tags=gpu` is groups a then b, tag gpu).
 * Keys: `group` (or `groups`; names or ids), `arch`, `tags` (or `tag`), `count` (1 to MAX_SET_ITEMS,
 * default 1). Without group, arch or tags, the pool's only group. CliError (usage) for anything
 * else: a bare word, an unknown or repeated key, an empty value, group and arch together, an
 * unknown group, arch or tag.
 */
export function parseVmSpec(cfg: Pick<Config, 'groups'>, spec: string, extraTags: readonly string[] = []): AcquireSetItemData[] {
  const fail = (why: string): never => {
    throw new CliError(`--vm ${JSON.stringify(spec)}: ${why}`, ExitCodes.USAGE);
  };
  const fields = new Map<'group' | 'arch' | 'tags' | 'count', string[]>();
  let current: string[] | undefined;
  for (const token of spec.split(',')) {
    const eq = token.indexOf('=');
    if (eq < 0) {
      if (!current) fail(`${JSON.stringify(token)} is not key=value; ${SPEC_HELP}`);
      if (token === '') fail('an empty value');
      current!.push(token);
      continue;
    }
    const rawKey = token.slice(0, eq).trim();
    const key = SPEC_KEYS[rawKey];
    if (!key) fail(`unknown key ${JSON.stringify(rawKey)}; ${SPEC_HELP}`);
    if (fields.has(key!)) fail(`${key} given twice`);
    const value = token.slice(eq + 1);
    if (value === '') fail(`${rawKey}= needs a value`);
    current = [value];
    fields.set(key!, current);
  }
  const groups = fields.get('group');
  const arch = fields.get('arch');
  const tags = [...(fields.get('tags') ?? []), ...extraTags.filter((t) => !(fields.get('tags') ?? []).includes(t))];
  const count = fields.get('count');
  if (groups && arch) fail('give group= or arch=, not both');
  if (arch && arch.length > 1) fail(`arch= takes one arch (got ${arch.join(', ')}); give one --vm per arch`);
  if (count && count.length > 1) fail('count= takes one number');
  const n = count ? Number(count[0]) : 1;
  if (!Number.isInteger(n) || n < 1 || n > MAX_SET_ITEMS) fail(`count must be a whole number from 1 to ${MAX_SET_ITEMS}, not ${JSON.stringify(count?.[0])}`);
  let item: AcquireSetItemData;
  if (groups) item = { groups: groups.map((g) => groupOfSpec(cfg, g, fail)) };
  else if (arch) item = { arch: arch[0]! };
  else if (tags.length > 0) item = {};
  else if (cfg.groups.length === 1) item = { groups: [cfg.groups[0]!.name] };
  else return fail(`give group=, arch= or tags= (groups: ${cfg.groups.map((g) => g.name).join(', ')})`);
  if (tags.length > 0) item.tags = tags;
  try {
    requestGroupIds(cfg.groups, item);
  } catch (err) {
    if (err instanceof RequestGroupsError) fail(err.message.replace(/^unknown arch (.*): no group lists it$/, 'no group lists arch $1'));
    throw err;
  }
  return Array.from({ length: n }, () => ({ ...item }));
}

function groupOfSpec(cfg: Pick<Config, 'groups'>, value: string, fail: (why: string) => never): string {
  try {
    return groupOf(cfg as Config, value);
  } catch (err) {
    return fail((err as Error).message);
  }
}

/** The items of every `--vm` (in order), at most MAX_SET_ITEMS VMs in all. */
export function parseVmSpecs(cfg: Pick<Config, 'groups'>, specs: readonly string[], extraTags: readonly string[] = []): AcquireSetItemData[] {
  if (specs.length === 0) throw new CliError(`give the VMs of the set with --vm; ${SPEC_HELP}`, ExitCodes.USAGE);
  const items = specs.flatMap((spec) => parseVmSpec(cfg, spec, extraTags));
  if (items.length > MAX_SET_ITEMS) throw new CliError(`a set has at most ${MAX_SET_ITEMS} VMs (asked for ${items.length})`, ExitCodes.USAGE);
  return items;
}

export const registerAcquireSet: RegisterCommand = (program, { config, settings, logger, withPool, print }) => {
  program
    .command('acquire-set')
    .description('wait for several VMs at once, all or nothing, and print them (each lease must be renewed or its VM is reclaimed)')
    .requiredOption('--owner <owner>', 'who builds')
    .requiredOption('--sandbox <sandbox>', 'build sandbox (VMs are reused within one owner and sandbox)')
    .option('--vm <spec...>', 'the VMs, in order: group=G[,G...] or arch=A, and/or tags=T[,T...], count=N (repeat --vm for each kind)')
    .option('--tag <tag...>', 'tags that every VM\'s group must list (added to each --vm\'s own)')
    .option('--timeout <seconds>', 'how long to wait for the whole set', parseSeconds)
    .option('--request-id <id>', 'identity of the request (per owner): re-running with it joins the request, and gets the same VMs')
    .option('--strict-group', "every VM only from the groups it lists, never from their fallback_groups")
    .option('--json', 'as JSON (default: shell assignments VM_NAME_0=... )')
    .addHelpText('after', '\nExamples:\n  vmpool acquire-set --owner alice --sandbox s --vm arch=x86_64,count=2 --vm group=arm\n  vmpool acquire-set --owner alice --sandbox s --vm group=big,base --vm tags=gpu --request-id job-42')
    .action(async (opts: { owner: string; sandbox: string; vm?: string[]; tag?: string[]; timeout?: number; requestId?: string; strictGroup?: boolean; json?: boolean }) => {
      const cfg = config();
      const request: AcquireSetRequestData = {
        owner: opts.owner,
        sandbox: opts.sandbox,
        vms: parseVmSpecs(cfg, opts.vm ?? [], opts.tag ?? []),
        timeoutMs: Math.round((opts.timeout ?? DEFAULT_ACQUIRE_TIMEOUT_MS / 1000) * 1000),
        ...(opts.requestId !== undefined ? { requestId: opts.requestId } : {}),
        ...(opts.strictGroup ? { strictGroup: true } : {}),
      };
      await withCliClient({ withPool, settings, logger }, request.timeoutMs!, async (client) => {
        const set = await client.acquireSet(request);
        print(opts.json === true, set, () =>
          [
            `VM_COUNT=${set.vms.length}`,
            ...set.vms.flatMap((a, i) => [`VM_NAME_${i}=${a.vmName}`, `VM_IP_${i}=${a.vmIp}`, `GROUP_${i}=${a.group}`, `LEASE_ID_${i}=${a.leaseId}`, `LEASE_EXPIRES_AT_${i}=${a.leaseExpiresAt}`]),
          ].join('\n'),
        );
      });
    });
};
