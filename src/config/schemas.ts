import { z } from 'zod';
import { embeddedGroups } from '../defaults.js';
import { POOL_ID_PATTERN } from '../pool/poolId.js';
import { parseCidr } from '../providers/addressPolicy.js';
import { passEnvProblem } from '../providers/hook.js';
import { cronProblem } from '../reconcile/minReady.js';
import { parseHostPort } from '../redisEndpoint.js';

// Every key carries its description (`.describe`): docs/reference/config.md and the JSON Schema
// (schema/vmpool.config.schema.json) are generated from this file.

const seconds = (fallback: number, description: string) => z.number().nonnegative().default(fallback).describe(description);
const positiveInt = (fallback: number, description: string) => z.number().int().positive().default(fallback).describe(description);
const port = () => z.number().int().min(1).max(65535);

/** A resource unit's name: `cores`, `ram_mb`, `instances` (every VM uses 1 instance), any other. */
export const RESOURCE_NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
/** Amounts per resource unit (what one VM uses, or a limit). */
export const resourcesSchema = z.record(
  z.string().regex(RESOURCE_NAME_PATTERN, 'a resource name: a letter, then letters, digits or _ (such as cores, ram_mb)'),
  z.number().nonnegative().finite(),
);

/** A hook command: an argv array, or a string "path arg arg" split on whitespace (never run by a shell). */
export const commandLineSchema = z.union([
  z.string().regex(/\S/, 'a command path with optional arguments'),
  z.array(z.string()).min(1, 'an argv array with at least the program'),
]);
const commandLine = (description: string) => commandLineSchema.describe(`${description}: an argv array, or a string "path arg arg" split on whitespace (never run by a shell)`);
const hookEnv = (description: string) => z.record(z.string(), z.string()).default({}).describe(description);
/** Names of vmpool's environment variables a hook gets too; REDIS_URL and VMPOOL_* are refused. */
const passEnv = (description: string) =>
  z
    .array(
      z.string().superRefine((name, ctx) => {
        const problem = passEnvProblem(name);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      }),
    )
    .default([])
    .describe(description);

export const localProviderSchema = z
  .strictObject({
    type: z.literal('local').describe('local: each VM is a detached local process serving SSH on 127.x (the embedded default)'),
    state_dir: z.string().min(1).optional().describe('Where VM state files and keys live; default `<os.tmpdir()>/vmpool-local-<uid>`'),
    port: port().default(2222).describe("TCP port every local VM listens on (each VM has its own 127.<ip_base>.x.y address)"),
    ip_base: z.number().int().min(1).max(254).default(77).describe("Second octet of the local VMs' addresses"),
    spawn_timeout: seconds(20, 'Seconds a spawn may take before it fails'),
  })
  .describe('Provider `local`: each VM is a detached local process serving SSH on 127.x');

export const commandProviderSchema = z
  .strictObject({
    type: z.literal('command').describe("command: hooks as in Copr's playbooks and resalloc's cmd_new/cmd_delete/cmd_list"),
    spawn_cmd: commandLine('Hook that makes a machine and prints its address'),
    terminate_cmd: commandLine('Hook that destroys a machine'),
    list_cmd: commandLine("Hook that lists the provider's machines (for leak and orphan passes)").optional(),
    spawn_timeout: z.number().positive().default(600).describe('Seconds spawn_cmd may take'),
    terminate_timeout: z.number().positive().default(300).describe('Seconds terminate_cmd may take'),
    list_timeout: z.number().positive().default(60).describe('Seconds list_cmd may take'),
    kill_grace: seconds(5, "Seconds between SIGTERM and SIGKILL of a hook's process group at its timeout"),
    env: hookEnv('Extra environment for every hook (a secret: never shown)'),
    pass_env: passEnv(
      "Names of vmpool's own environment variables that every hook gets too, beyond PATH, HOME, LANG and TZ (such as cloud credentials: OS_CLOUD). REDIS_URL, REDISCLI_AUTH and VMPOOL_* are refused",
    ),
  })
  .describe("Provider `command` (production): hooks as in Copr's playbooks and resalloc's cmd_new/cmd_delete/cmd_list");

export const providerConfigSchema = z.discriminatedUnion('type', [localProviderSchema, commandProviderSchema]);

export const sshCheckSchema = z
  .strictObject({
    type: z.literal('ssh').describe('ssh: run `echo hello` over SSH and expect `hello` (as Copr)'),
    user: z.string().min(1).default('root').describe('SSH user'),
    private_key: z.string().min(1).optional().describe('Private key file; for the local provider the default is the key it generates in its state_dir'),
    port: port().optional().describe('SSH port; default 22, for the local provider its port'),
    host_key_policy: z
      .enum(['accept-new', 'known_hosts'])
      .default('accept-new')
      .describe("accept-new: remember each VM's first host key (by name and IP) in known_hosts; known_hosts: strict"),
    known_hosts: z
      .string()
      .min(1)
      .optional()
      .describe('accept-new: the file vmpool keeps (default in the state dir); known_hosts: an OpenSSH known_hosts file'),
  })
  .describe('Check `ssh` (the default, as Copr): run `echo hello` over SSH and expect `hello`');

export const tcpCheckSchema = z
  .strictObject({
    type: z.literal('tcp').describe('tcp: a TCP connection to the port succeeds'),
    port: port().describe('TCP port to connect to'),
  })
  .describe('Check `tcp`: a TCP connection to the port succeeds');

export const commandCheckSchema = z
  .strictObject({
    type: z.literal('command').describe("command: resalloc's livecheck, exit 0 means healthy"),
    cmd: commandLine('Check command'),
    env: hookEnv('Extra environment for the command (a secret: never shown)'),
    pass_env: passEnv(
      "Names of vmpool's own environment variables that the command gets too, beyond PATH, HOME, LANG and TZ. REDIS_URL, REDISCLI_AUTH and VMPOOL_* are refused",
    ),
  })
  .describe("Check `command` (resalloc's livecheck): exit 0 means healthy");

export const providerCheckSchema = z
  .strictObject({ type: z.literal('provider').describe('provider: the provider answers itself (its `check` method)') })
  .describe('Check `provider`: the provider answers itself (its `check` method)');

export const checkConfigSchema = z.discriminatedUnion('type', [sshCheckSchema, tcpCheckSchema, commandCheckSchema, providerCheckSchema]);

export type ProviderConfig = z.output<typeof providerConfigSchema>;
export type CheckConfig = z.output<typeof checkConfigSchema>;

/** The percentiles a target_wait may name. */
export const targetWaitPercentiles = ['p50', 'p90', 'p95', 'p99'] as const;

const percentileSeconds = (p: string) => z.number().positive().optional().describe(`Seconds within which ${p.slice(1)}% of acquires are served`);

/**
 * A group's name names its Redis keys (`group:<name>:...`) and job ids (spawn ids `g<name>-...`):
 * no ':' (a key separator, refused in BullMQ ids), no '{' (a hash tag), no space; not only digits,
 * so that an API or CLI input of digits is always an index.
 */
export const GROUP_NAME_PATTERN = /^(?![0-9]+$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** One build group, as Copr's `build_groups`. Defaults are Copr's. */
export const groupConfigSchema = z
  .strictObject({
    name: z
      .string()
      .regex(GROUP_NAME_PATTERN, 'a group name: a letter or digit, then up to 63 letters, digits or . _ -, not only digits (it names Redis keys; digits alone are an index)')
      .describe("Group name, unique: the group's identity in Redis, jobs and records (its index in `groups` is only an alias in the API and CLI; renaming makes a new group)"),
    archs: z.array(z.string().min(1)).default([]).describe('Architectures the group serves: an acquire by arch picks the groups listing it'),
    tags: z
      .array(z.string().min(1).max(64))
      .default([])
      .describe('Capabilities an acquire may ask for (`tags: [kvm, large]`: a group must list all of them)'),
    allowed_networks: z
      .array(
        z.string().superRefine((value, ctx) => {
          try {
            parseCidr(value);
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: `a CIDR such as 10.0.0.0/8 or fd00::/8 (${(err as Error).message})` });
          }
        }),
      )
      .min(1)
      .optional()
      .describe(
        "CIDRs that spawned VMs' addresses must lie in. Without it, unspecified, broadcast, multicast, link-local and (except for the local provider) loopback addresses are refused",
      ),
    max_vm_total: z
      .number()
      .int()
      .nonnegative()
      .default(8)
      .describe(
        "VMs of the group, not counting terminating or failed ones. 0 drains the group (Copr's and resalloc's way): nothing is spawned, the VMs it has are still served, and the dirty timeout and reuse limits retire them; a group of hand-added machines (`vmpool add`) keeps 0",
      ),
    max_vm_per_user: positiveInt(4, 'VMs of the group bound to one owner'),
    resources: resourcesSchema
      .default({})
      .describe(
        'What one VM of the group uses, in any units (`{ cores: 4, ram_mb: 8192 }`); every VM also uses 1 `instances`. Spawns are counted against max_resources and the account\'s limits in these units',
      ),
    max_resources: resourcesSchema
      .optional()
      .describe('Limits of the whole group in the units of `resources` (`{ cores: 32 }`), beside max_vm_total: a spawn starts only if the group\'s VMs and spawns in flight, plus the new one, fit'),
    max_resources_per_owner: resourcesSchema
      .optional()
      .describe(
        'Limits of one owner in the group, in the units of `resources` (`{ cores: 16 }`), beside max_vm_per_user: the VMs bound to an owner must fit, so the owner may have max_vm_per_user VMs or as many as these limits hold, whichever is fewer (an owner at it waits as `owner_resources`). Must hold at least one VM',
      ),
    account: z
      .string()
      .optional()
      .describe(
        'The cloud account (a name under the top-level `accounts`) whose limits and quota_cmd this group shares with the other groups naming it',
      ),

    max_waiting_per_owner: positiveInt(
      100,
      "Acquire requests of one owner that may wait in the group's line at once; one beyond it is refused at once (HTTP 429 with Retry-After, TooManyWaiting, CLI exit 5) and nothing of it waits",
    ),
    max_spawn_processes: positiveInt(2, 'Spawns in flight at once'),
    vm_spawn_min_interval: seconds(30, 'Seconds between spawn starts'),
    vm_dirty_terminating_timeout: seconds(120, 'Seconds after which a released (dirty) VM not acquired again is terminated'),
    vm_health_check_period: seconds(120, 'Seconds between health checks of a VM'),
    vm_health_check_max_time: seconds(300, 'Seconds after which a health check that never reported back is failed'),
    vm_max_check_fails: z.number().int().nonnegative().default(2).describe('A VM is terminated once its failed health checks in a row exceed this'),
    vm_terminating_timeout: seconds(600, 'Seconds after which termination is requested again'),
    // Beyond Copr: warm pool, reuse limits, leases (job system).
    min_ready: z
      .union([
        z.number().int().nonnegative(),
        z.strictObject({
          default: z.number().int().nonnegative().describe('Clean ready VMs when no period matches'),
          periods: z
            .array(
              z
                .strictObject({
                  cron: z.string().min(1).describe('Cron expression of the minutes the period covers'),
                  tz: z.string().min(1).default('UTC').describe('Time zone of the cron expression'),
                  value: z.number().int().nonnegative().describe('Clean ready VMs during the period'),
                })
                .superRefine((p, ctx) => {
                  const problem = cronProblem(p.cron, p.tz);
                  if (problem) ctx.addIssue({ code: 'custom', message: problem });
                }),
            )
            .default([])
            .describe('Periods, first match wins'),
        }),
      ])
      .default(0)
      .describe(
        'Clean ready VMs kept waiting for builders (warm pool): a number, or `{ default, periods: [{ cron, tz, value }] }` whose first period matching the current minute gives the value',
      ),
    target_wait: z
      .strictObject({
        p50: percentileSeconds('p50'),
        p90: percentileSeconds('p90'),
        p95: percentileSeconds('p95'),
        p99: percentileSeconds('p99'),
        window: seconds(900, 'Seconds over which the arrival rate is measured (at least 60)'),
      })
      .superRefine((t, ctx) => {
        const given = targetWaitPercentiles.filter((p) => t[p] !== undefined);
        if (given.length !== 1) ctx.addIssue({ code: 'custom', message: `exactly one of ${targetWaitPercentiles.join(', ')} (seconds), such as { p95: 30 }` });
        if (t.window < 60) ctx.addIssue({ code: 'custom', path: ['window'], message: 'at least 60 seconds' });
      })
      .optional()
      .describe(
        'Warm pool by target wait, instead of min_ready: `{ p95: 30 }` keeps enough clean VMs ready that 95% of acquires are served within 30 s, from the measured arrival rate and boot time. One of p50, p90, p95, p99',
      ),
    breaker: z
      .strictObject({
        failures: z.number().int().positive().optional().describe('Failures in a row of one class that open the breaker (default 3)'),
        backoff: z.number().positive().optional().describe('Seconds the breaker stays open at its first opening (default 60)'),
        max_backoff: z.number().positive().optional().describe('Seconds the doubled backoff grows to at most (default 3600)'),
      })
      .optional()
      .describe(
        'The spawn circuit breaker: `failures` in a row of one class (quota, capacity, rate_limit, transient, unclassified) open it for `backoff` seconds, doubled at each opening up to `max_backoff`; auth and invalid_request open it until `vmpool breaker reset`',
      ),
    fallback_groups: z
      .array(z.string().min(1))
      .optional()
      .describe("Groups that serve this group's new demand while its breaker is open, it is at max_vm_total, or its spawns wait as quota_full, first that can take it"),
    min_ready_floor: z.number().int().nonnegative().optional().describe('Lower bound of the warm pool that target_wait sizes (default 0)'),
    min_ready_ceiling: z.number().int().nonnegative().optional().describe('Upper bound of the warm pool that target_wait sizes (default max_vm_total)'),
    reuse_max_count: z.number().int().nonnegative().default(0).describe('Retire a dirty VM after this many builds (0: no limit)'),
    reuse_max_time: seconds(0, 'Retire a dirty VM this many seconds after its first acquisition by its owner and sandbox (0: no limit)'),
    lease_timeout: z.number().positive().default(300).describe('Seconds an assignment lives without a renew'),
    max_ready_age: z
      .number()
      .positive()
      .optional()
      .describe(
        "Seconds a clean ready VM may stay ready, counted from its first passed health check (nodepool's max-ready-age); an older one is retired (reason max_ready_age) once a replacement keeps min_ready. Absent: no limit",
      ),
    image: z
      .string()
      .min(1)
      .optional()
      .describe(
        "The image the group's machines boot: part of the launch fingerprint, and given to every hook as VMPOOL_IMAGE. A change rolls the group's VMs over to new ones",
      ),
    launch_revision: z
      .number()
      .int()
      .nonnegative()
      .default(0)
      .describe(
        'A number the operator bumps to roll the group to new VMs (part of the launch fingerprint). A config with a higher launch_revision than the pool publishes wins over replicas still on a lower one, whatever their start order; a lower one never takes over. A config that was current once and was replaced never wins again by start order: bump launch_revision to roll back on purpose',
      ),
    on_lease_expiry: z
      .enum(['terminate', 'release'])
      .default('terminate')
      .describe('What happens to a VM whose lease lapsed: its state is unknown, so it is terminated by default'),
    vm_ssh_check_timeout: z.number().positive().default(5).describe('Seconds a health check (connect and command) may take'),
    vm_spawn_stale_timeout: z
      .number()
      .positive()
      .default(1800)
      .describe('Seconds after which a spawn still in flight is taken as lost (its job died) and no longer counted'),
    provider: providerConfigSchema
      .default({ type: 'local', port: 2222, ip_base: 77, spawn_timeout: 20 })
      .describe('How machines are made and destroyed: `local` or `command`'),
    check: checkConfigSchema
      .default({ type: 'ssh', user: 'root', host_key_policy: 'accept-new' })
      .describe("How a machine's health is checked: `ssh`, `tcp`, `command` or `provider`"),
    check_on_acquire: z
      .enum(['tcp', 'command', 'ssh'])
      .optional()
      .describe(
        "Check each VM once more right before it is handed out (the group's `check`, whose type this names, with its settings): a VM that fails is terminated and the next one is tried, within the request's deadline. Catches machines lost since their last periodic check; adds one check's time to every acquire",
      ),
    check_on_acquire_timeout: z
      .number()
      .positive()
      .default(3)
      .describe('Seconds the check at hand-over (check_on_acquire) may take; no answer within it is a failure'),
    orphan_check_period: seconds(600, "Seconds between leak/orphan passes that compare the provider's list with the pool (0: never; needs list_cmd)"),
    orphan_grace_period: seconds(900, 'Seconds an unknown machine (or a pool VM still in got_ip) is left alone before cleanup'),
  })
  .superRefine((g, ctx) => {
    for (const [unit, limit] of Object.entries(g.max_resources_per_owner ?? {})) {
      // 'instances' is what every VM uses 1 of (reconcile/quota.ts INSTANCES).
      const perVm = unit === 'instances' ? 1 : g.resources[unit];
      if (perVm === undefined) {
        const units = ['instances', ...Object.keys(g.resources)].join(', ');
        ctx.addIssue({ code: 'custom', path: ['max_resources_per_owner', unit], message: `a unit of the group's resources (${units}): its VMs use no ${unit}` });
      } else if (limit < perVm) {
        ctx.addIssue({ code: 'custom', path: ['max_resources_per_owner', unit], message: `at least what one VM uses (${perVm} ${unit}), or no owner could ever have a VM` });
      }
    }
    if (g.check_on_acquire && g.check_on_acquire !== g.check.type) {
      ctx.addIssue({
        code: 'custom',
        path: ['check_on_acquire'],
        message: `check_on_acquire runs the group's check: it must be its type (${g.check.type}), with check: { type: ${g.check_on_acquire}, ... } to check by ${g.check_on_acquire}`,
      });
    }
    if (g.target_wait && g.min_ready !== 0) {
      ctx.addIssue({ code: 'custom', path: ['min_ready'], message: 'no min_ready with target_wait (bound target_wait with min_ready_floor and min_ready_ceiling)' });
    }
    if (!g.target_wait && (g.min_ready_floor !== undefined || g.min_ready_ceiling !== undefined)) {
      ctx.addIssue({ code: 'custom', path: ['target_wait'], message: 'a target_wait such as { p95: 30 } (min_ready_floor and min_ready_ceiling bound it)' });
    }
    if (g.min_ready_floor !== undefined && g.min_ready_ceiling !== undefined && g.min_ready_floor > g.min_ready_ceiling) {
      ctx.addIssue({ code: 'custom', path: ['min_ready_floor'], message: `at most min_ready_ceiling (${g.min_ready_ceiling})` });
    }
    if (g.check.type === 'ssh' && g.provider.type !== 'local' && !g.check.private_key) {
      ctx.addIssue({ code: 'custom', path: ['check', 'private_key'], message: 'a private key file for the ssh check' });
    }
    if (g.check.type === 'ssh' && g.check.host_key_policy === 'known_hosts' && !g.check.known_hosts) {
      ctx.addIssue({ code: 'custom', path: ['check', 'known_hosts'], message: 'a known_hosts file (host_key_policy is known_hosts)' });
    }
  })
  .describe("One build group, as Copr's `build_groups`; defaults are Copr's");

function hostPortSchema(defaultPort: number) {
  return z.string().refine((v) => parseHostPort(v, defaultPort) !== null, 'host:port, such as 10.0.0.5:6379');
}

export const redisConfigSchema = z.strictObject({
  url: z.string().min(1).default('redis://127.0.0.1:6379').describe('Redis URL (redis://, rediss://, redis+cluster://, redis+sentinel://); REDIS_URL overrides'),
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9_.{}-]+$/, 'letters, digits, and . _ - { } only')
    .default('vmpool')
    .describe('Key prefix of the pool and its queues, one per pool; VMPOOL_PREFIX overrides. On a Cluster it needs a hash tag, such as `{vmpool}`'),
  require_safe: z.boolean().optional().describe("Refuse to start when Redis's settings are unsafe for vmpool; else warn (default)"),
  appendfsync: z.enum(['always', 'everysec', 'no']).optional().describe('The weakest appendfsync the operator accepts: always > everysec (default) > no'),
  cluster: z
    .array(hostPortSchema(6379))
    .min(1)
    .optional()
    .describe('A Redis Cluster instead of `url`: some of its nodes (host:port). The prefix must then carry a hash tag (`{vmpool}`): one pool lives in one slot'),
  sentinel: z
    .strictObject({
      name: z.string().min(1).describe("The master's name"),
      sentinels: z.array(hostPortSchema(26379)).min(1).describe('Some sentinels (host:port)'),
      username: z.string().min(1).optional().describe('User of the sentinels themselves, when they need one'),
      password: z.string().min(1).optional().describe('Password of the sentinels themselves (a secret: never shown)'),
    })
    .optional()
    .describe('A master found through Redis Sentinel instead of `url`: its name and some sentinels'),
  username: z.string().min(1).optional().describe("User of the Redis servers (Cluster nodes, the Sentinel's master); a URL's user info wins"),
  password: z.string().min(1).optional().describe("Password of the Redis servers (a secret: never shown); a URL's user info wins"),
  tls: z
    .union([
      z.boolean(),
      z.strictObject({
        ca: z.string().min(1).optional().describe('CA certificate file'),
        servername: z.string().min(1).optional().describe('Server name to verify (SNI)'),
        reject_unauthorized: z.boolean().optional().describe('Refuse servers whose certificate does not verify (default true)'),
      }),
    ])
    .optional()
    .describe('TLS to the servers (and the sentinels): true, or a CA file and options. rediss:// says the same for a URL'),
  wait_replicas: z
    .number()
    .int()
    .min(1)
    .optional()
    .describe('After each acquire and release, wait until this many replicas have the write (Redis WAIT), so that an acknowledged assignment survives a failover. Off when absent'),
  wait_timeout: z.number().positive().optional().describe('Seconds that WAIT may take before the acquire or release is answered anyway (default 0.5)'),
});

/** Scopes of API tokens: read (every read: metrics, pool page, GET routes, read-only Bull Board), builder (acquire, release, renew) and admin (everything). */
export const webScopes = ['read', 'builder', 'admin'] as const;
export type WebScope = (typeof webScopes)[number];

const apiToken = () => z.string().min(16, 'a token of at least 16 characters');

/** The `web` process: API, pool page, Bull Board, metrics. Off loopback it needs a token. */
export const webConfigSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1').describe('Address to listen on; loopback may run open, any other needs a token. HOST overrides'),
  port: z.number().int().min(0).max(65535).default(8080).describe('Port to listen on; PORT overrides'),
  read_only_board: z.boolean().default(false).describe('Bull Board shows the queues but cannot retry, remove or add jobs'),
  allowed_hosts: z
    .array(z.string().regex(/^(\*\.)?[A-Za-z0-9.:\[\]_-]+$/, 'a host name, an address, or *.domain'))
    .default([])
    .describe(
      'Host names (or addresses) that requests may carry in their Host header besides loopback ones: `ci.example.org`, or `*.example.org` for its subdomains. Any other Host is refused (DNS rebinding)',
    ),
  public_url: z
    .url({ protocol: /^https?$/ })
    .optional()
    .describe('The URL operators and builders reach the web process by (behind a proxy); its host is allowed'),
  auth: z
    .strictObject({
      token: apiToken().optional().describe('Shorthand for one token with the admin scope (a secret: never shown)'),
      tokens: z
        .array(
          z.strictObject({
            name: z.string().min(1).optional().describe('Name of the token, in logs and as the default hold owner'),
            token: apiToken().describe('The bearer token, at least 16 characters (a secret: never shown)'),
            scopes: z.array(z.enum(webScopes)).min(1).describe('read (metrics, the pool page, GET routes, the audit trail, Bull Board read-only), builder (acquire, release, renew) and/or admin (everything)'),
            owners: z
              .array(z.string().min(1).max(255))
              .min(1)
              .optional()
              .describe("Owners this token may acquire for (`*` matches any run of characters: `copr-*`). Without it the token acts for any owner (one trusted dispatcher such as Copr's backend)"),
          }),
        )
        .default([])
        .describe('API tokens, each with its scopes'),
    })
    .default({ tokens: [] })
    .describe('API tokens; without any, the API is open (loopback only, and never with public_url or allowed_hosts)'),
});
export type WebConfig = z.output<typeof webConfigSchema>;

/** A cloud account (zuul-launcher's provider quota): limits shared by the groups that name it. */
export const accountConfigSchema = z
  .strictObject({
    max_resources: resourcesSchema
      .default({})
      .describe('Limits of the account in resource units (`{ instances: 20, cores: 64 }`), counted over every group naming it'),
    max_resources_per_owner: resourcesSchema
      .optional()
      .describe(
        "Limits of one owner over every group naming the account, in resource units (`{ cores: 32 }`): the VMs bound to an owner in those groups, together, must fit (an owner at it waits as `owner_resources`). Each unit must be one that a group of the account uses, at least what one VM of each such group uses",
      ),
    quota_cmd: commandLine(
      "Hook that prints the cloud's own limits and usage as one JSON object {\"limits\": {...}, \"usage\": {...}, \"pool_usage\": {...}} (docs/providers.md); usage by machines not of this pool counts against the limits",
    ).optional(),
    quota_cache: z.number().positive().default(300).describe("Seconds quota_cmd's answer is kept (in Redis, for every replica) before it runs again"),
    quota_timeout: z.number().positive().default(60).describe('Seconds quota_cmd may take'),
    kill_grace: seconds(5, "Seconds between SIGTERM and SIGKILL of quota_cmd's process group at its timeout"),
    env: hookEnv('Extra environment for quota_cmd (a secret: never shown)'),
    pass_env: passEnv("Names of vmpool's own environment variables that quota_cmd gets too, beyond PATH, HOME, LANG and TZ. REDIS_URL, REDISCLI_AUTH and VMPOOL_* are refused"),
  })
  .describe("A cloud account: limits in resource units shared by the groups naming it, and the cloud's own quota (quota_cmd)");
export type AccountConfig = z.output<typeof accountConfigSchema>;

export const configSchema = z
  .strictObject({
    redis: redisConfigSchema.default({ url: 'redis://127.0.0.1:6379', prefix: 'vmpool' }).describe('Where Redis is, and the key prefix of the pool'),
    pool_id: z
      .string()
      .regex(POOL_ID_PATTERN, 'a letter or digit, then up to 127 letters, digits, . _ -')
      .optional()
      .describe("The pool's identity, which hooks get as VMPOOL_POOL_ID to tag and filter machines with. Without it, derived from the prefix"),
    vm_cycle_timeout: z.number().positive().default(10).describe('Seconds between reconcile cycles'),
    max_hold_age: z.number().nonnegative().default(0).describe("Seconds after which a hold ends by itself (nodepool's max-hold-age); 0: holds last until unheld"),
    acquire_safety_retry: z
      .number()
      .positive()
      .default(30)
      .describe("Seconds between the acquire line's safety sweeps (each acquire process dispatches every group and re-wakes served requests whose wake was lost)"),
    concurrency: z
      .strictObject({
        acquire: positiveInt(50, 'Acquire jobs at once per acquire process; ACQUIRE_CONCURRENCY overrides'),
        spawn: positiveInt(4, 'Spawn jobs at once per spawn process; SPAWN_CONCURRENCY overrides'),
        health: positiveInt(20, 'Health checks at once per health process; HEALTH_CONCURRENCY overrides'),
        terminate: positiveInt(4, 'Terminate jobs at once per terminate process; TERMINATE_CONCURRENCY overrides'),
      })
      .default({ acquire: 50, spawn: 4, health: 20, terminate: 4 })
      .describe('Worker concurrency per process type; <TYPE>_CONCURRENCY in the environment overrides'),
    jobs: z
      .strictObject({
        lock_duration: z.number().positive().default(30).describe("Seconds of a job's lock; a dead process's active job is recovered after it lapses"),
        stalled_interval: z.number().positive().default(30).describe('Seconds between stalled-job checks'),
        max_stalled_count: z.number().int().nonnegative().default(1).describe('Recoveries of one job before it fails'),
      })
      .default({ lock_duration: 30, stalled_interval: 30, max_stalled_count: 1 })
      .describe(
        'BullMQ stalled-job recovery, for every worker: a job whose lock is not renewed, because its process died, goes back to waiting at a check, at most max_stalled_count times; then it fails',
      ),
    audit: z
      .strictObject({
        max_events: z.number().int().min(1).optional().describe('About how many events the trail keeps (older ones are trimmed); default 100000'),
      })
      .optional()
      .describe('The audit trail of VM lifecycle events; absent: its defaults'),
    web: webConfigSchema
      .default({ host: '127.0.0.1', port: 8080, read_only_board: false, allowed_hosts: [], auth: { tokens: [] } })
      .describe('The web process: API, pool page, Bull Board, metrics. Off loopback it needs a token'),
    max_resources_per_owner: resourcesSchema
      .optional()
      .describe(
        "Limits of one owner over every group, in resource units (`{ cores: 64, instances: 10 }`; nodepool's tenant limits): the VMs bound to an owner in all groups together must fit, beside each group's max_vm_per_user and max_resources_per_owner (an owner at it waits as `owner_resources`). Each unit must be one that some group uses, at least what one VM of each group using it uses",
      ),
    accounts: z
      .record(z.string().regex(GROUP_NAME_PATTERN, 'an account name: a letter or digit, then letters, digits or . _ - (it names Redis keys)'), accountConfigSchema)
      .default({})
      .describe("Cloud accounts (zuul-launcher's providers): limits and quota_cmd shared by the groups that name one in `account`"),
    groups: z
      .array(groupConfigSchema)
      .min(1)
      .superRefine((groups, ctx) => {
        const seen = new Set<string>();
        groups.forEach((g, i) => {
          if (seen.has(g.name)) {
            ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `a unique group name (duplicate "${g.name}")` });
          }
          seen.add(g.name);
        });
        groups.forEach((g, i) => {
          for (const [j, name] of (g.fallback_groups ?? []).entries()) {
            if (name === g.name) ctx.addIssue({ code: 'custom', path: [i, 'fallback_groups', j], message: 'another group than this one' });
            else if (!groups.some((o) => o.name === name)) {
              ctx.addIssue({ code: 'custom', path: [i, 'fallback_groups', j], message: `a group name (${JSON.stringify(name)} is none; groups: ${groups.map((o) => o.name).join(', ')})` });
            }
          }
        });
      })
      .prefault(() => structuredClone(embeddedGroups))
      .describe("Build groups (Copr's build_groups). Without it, the embedded default's group (local provider), so a file may set one thing only"),
  })
  .superRefine((c, ctx) => {
    checkOwnerLimitsAcross(c.max_resources_per_owner, c.groups, ['max_resources_per_owner'], 'group', ctx);
    for (const [name, account] of Object.entries(c.accounts)) {
      const groups = c.groups.filter((g) => g.account === name);
      // An account no group names yet limits nothing: its units are checked once a group names it.
      if (groups.length > 0) checkOwnerLimitsAcross(account.max_resources_per_owner, groups, ['accounts', name, 'max_resources_per_owner'], `group of account ${name}`, ctx);
    }
    c.groups.forEach((g, i) => {
      if (g.account !== undefined && !Object.hasOwn(c.accounts, g.account)) {
        const known = Object.keys(c.accounts);
        ctx.addIssue({
          code: 'custom',
          path: ['groups', i, 'account'],
          message: `an account under \`accounts\` (${JSON.stringify(g.account)} is none; ${known.length > 0 ? `accounts: ${known.join(', ')}` : 'no account is configured'})`,
        });
      }
    });
  })
  .describe('vmpool config file');

/**
 * An owner's limits across groups (the top-level or an account's max_resources_per_owner): each
 * unit must be used by one of `groups` (a name no VM uses limits nothing, likely a typo), and be at
 * least what one VM of each group using it uses: below it, no owner could ever have a VM of that
 * group, which would be unusable for everyone.
 */
function checkOwnerLimitsAcross(
  limits: Readonly<Record<string, number>> | undefined,
  groups: readonly { name: string; resources: Readonly<Record<string, number>> }[],
  path: (string | number)[],
  what: string,
  ctx: z.RefinementCtx,
): void {
  for (const [unit, limit] of Object.entries(limits ?? {})) {
    // 'instances' is what every VM uses 1 of (reconcile/quota.ts INSTANCES).
    const users = groups.map((g) => ({ name: g.name, perVm: unit === 'instances' ? 1 : (g.resources[unit] ?? 0) })).filter((u) => u.perVm > 0);
    if (users.length === 0) {
      const units = [...new Set(['instances', ...groups.flatMap((g) => Object.keys(g.resources))])].join(', ');
      ctx.addIssue({ code: 'custom', path: [...path, unit], message: `a unit that a ${what} uses (${units}): no VM uses ${unit}` });
      continue;
    }
    for (const { name, perVm } of users) {
      if (limit < perVm) {
        ctx.addIssue({
          code: 'custom',
          path: [...path, unit],
          message: `at least what one VM of group ${JSON.stringify(name)} uses (${perVm} ${unit}), or no owner could ever have a VM of that group`,
        });
      }
    }
  }
}

export type GroupConfig = z.output<typeof groupConfigSchema>;
export type GroupInput = z.input<typeof groupConfigSchema>;
export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
