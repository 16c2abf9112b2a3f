import { z } from 'zod';
import { embeddedGroups } from '../defaults.js';
import { POOL_ID_PATTERN } from '../pool/poolId.js';
import { parseCidr } from '../providers/addressPolicy.js';
import { cronProblem } from '../reconcile/minReady.js';
import { parseHostPort } from '../redisEndpoint.js';

const seconds = (fallback: number) => z.number().nonnegative().default(fallback);
const positiveInt = (fallback: number) => z.number().int().positive().default(fallback);

/** A hook command: an argv array, or a string "path arg arg" split on whitespace (never run by a shell). */
export const commandLineSchema = z.union([
  z.string().regex(/\S/, 'a command path with optional arguments'),
  z.array(z.string()).min(1, 'an argv array with at least the program'),
]);

/** Provider `local` (the embedded default): each VM is a detached local process serving SSH on 127.x. */
export const localProviderSchema = z.strictObject({
  type: z.literal('local'),
  /** Where VM state files and keys live; default `<os.tmpdir()>/vmpool-local-<uid>`. */
  state_dir: z.string().min(1).optional(),
  /** TCP port every local VM listens on (each VM has its own 127.<ip_base>.x.y address). */
  port: z.number().int().min(1).max(65535).default(2222),
  /** Second octet of the local VMs' addresses. */
  ip_base: z.number().int().min(1).max(254).default(77),
  /** Seconds a spawn may take before it fails. */
  spawn_timeout: seconds(20),
});

/** Provider `command` (production): hooks as in Copr's playbooks and resalloc's cmd_new/cmd_delete/cmd_list. */
export const commandProviderSchema = z.strictObject({
  type: z.literal('command'),
  spawn_cmd: commandLineSchema,
  terminate_cmd: commandLineSchema,
  list_cmd: commandLineSchema.optional(),
  spawn_timeout: z.number().positive().default(600),
  terminate_timeout: z.number().positive().default(300),
  list_timeout: z.number().positive().default(60),
  /** Seconds between SIGTERM and SIGKILL of a hook's process group at its timeout. */
  kill_grace: seconds(5),
  /** Extra environment for every hook. */
  env: z.record(z.string(), z.string()).default({}),
});

export const providerConfigSchema = z.discriminatedUnion('type', [localProviderSchema, commandProviderSchema]);

/** Check `ssh` (default, as Copr): run `echo hello` over SSH and expect `hello`. */
export const sshCheckSchema = z.strictObject({
  type: z.literal('ssh'),
  user: z.string().min(1).default('root'),
  /** Private key file; for the local provider the default is the key it generates in its state_dir. */
  private_key: z.string().min(1).optional(),
  /** Default 22; for the local provider, its port. */
  port: z.number().int().min(1).max(65535).optional(),
  /** accept-new: remember each VM's first host key (by name and IP) in known_hosts; known_hosts: strict. */
  host_key_policy: z.enum(['accept-new', 'known_hosts']).default('accept-new'),
  /** accept-new: the file vmpool keeps (default in the state dir); known_hosts: an OpenSSH known_hosts file. */
  known_hosts: z.string().min(1).optional(),
});

export const tcpCheckSchema = z.strictObject({
  type: z.literal('tcp'),
  port: z.number().int().min(1).max(65535),
});

/** Check `command` (resalloc's livecheck): exit 0 means healthy. */
export const commandCheckSchema = z.strictObject({
  type: z.literal('command'),
  cmd: commandLineSchema,
  env: z.record(z.string(), z.string()).default({}),
});

/** Check `provider`: the provider answers itself (its `check` method). */
export const providerCheckSchema = z.strictObject({ type: z.literal('provider') });

export const checkConfigSchema = z.discriminatedUnion('type', [
  sshCheckSchema,
  tcpCheckSchema,
  commandCheckSchema,
  providerCheckSchema,
]);

export type ProviderConfig = z.output<typeof providerConfigSchema>;
export type CheckConfig = z.output<typeof checkConfigSchema>;

/** The percentiles a target_wait may name. */
export const targetWaitPercentiles = ['p50', 'p90', 'p95', 'p99'] as const;

/** One build group, as Copr's `build_groups`. Defaults are Copr's. */
export const groupConfigSchema = z.strictObject({
  name: z.string().min(1),
  archs: z.array(z.string().min(1)).default([]),
  /** Capabilities an acquire may ask for (`tags: [kvm, large]`: a group must list all of them). */
  tags: z.array(z.string().min(1).max(64)).default([]),
  /**
   * CIDRs that spawned VMs' addresses must lie in. Without it, unspecified, broadcast, multicast,
   * link-local and (except for the local provider) loopback addresses are refused.
   */
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
    .optional(),
  /**
   * VMs of the group, not counting terminating or failed ones. 0 drains the group (Copr's and
   * resalloc's way): nothing is spawned, the VMs it has are still served, and the dirty timeout and
   * reuse limits retire them; a group of hand-added machines (`vmpool add`) keeps 0.
   */
  max_vm_total: z.number().int().nonnegative().default(8),
  max_vm_per_user: positiveInt(4),
  max_spawn_processes: positiveInt(2),
  vm_spawn_min_interval: seconds(30),
  vm_dirty_terminating_timeout: seconds(120),
  vm_health_check_period: seconds(120),
  vm_health_check_max_time: seconds(300),
  vm_max_check_fails: z.number().int().nonnegative().default(2),
  vm_terminating_timeout: seconds(600),
  // Beyond Copr: warm pool, reuse limits, leases (job system).
  /** Clean ready VMs to keep waiting for builders. */
  /**
   * Clean ready VMs kept waiting: a number, or `{ default, periods: [{ cron, tz, value }] }` whose
   * first period matching the current minute gives the value (see src/reconcile/minReady.ts).
   */
  min_ready: z
    .union([
      z.number().int().nonnegative(),
      z.strictObject({
        default: z.number().int().nonnegative(),
        periods: z
          .array(
            z
              .strictObject({ cron: z.string().min(1), tz: z.string().min(1).default('UTC'), value: z.number().int().nonnegative() })
              .superRefine((p, ctx) => {
                const problem = cronProblem(p.cron, p.tz);
                if (problem) ctx.addIssue({ code: 'custom', message: problem });
              }),
          )
          .default([]),
      }),
    ])
    .default(0),
  /**
   * Warm pool by target wait, instead of min_ready: `{ p95: 30 }` keeps enough clean VMs ready that
   * 95% of acquires are served within 30 s, from the measured arrival rate (over `window` seconds)
   * and boot time (src/reconcile/targetWait.ts). One of p50, p90, p95, p99.
   */
  target_wait: z
    .strictObject({
      p50: z.number().positive().optional(),
      p90: z.number().positive().optional(),
      p95: z.number().positive().optional(),
      p99: z.number().positive().optional(),
      window: seconds(900),
    })
    .superRefine((t, ctx) => {
      const given = targetWaitPercentiles.filter((p) => t[p] !== undefined);
      if (given.length !== 1) ctx.addIssue({ code: 'custom', message: `exactly one of ${targetWaitPercentiles.join(', ')} (seconds), such as { p95: 30 }` });
      if (t.window < 60) ctx.addIssue({ code: 'custom', path: ['window'], message: 'at least 60 seconds' });
    })
    .optional(),
  /**
   * The spawn circuit breaker: `failures` in a row of one class (quota, capacity, rate_limit,
   * transient, unclassified) open it for `backoff` seconds, doubled at each opening up to
   * `max_backoff`; auth and invalid_request open it until `vmpool breaker reset` (defaults 3, 60, 3600).
   */
  breaker: z
    .strictObject({ failures: z.number().int().positive().optional(), backoff: z.number().positive().optional(), max_backoff: z.number().positive().optional() })
    .optional(),
  /** Groups that serve this group's new demand while its breaker is open or it is at max_vm_total, first that can take it. */
  fallback_groups: z.array(z.string().min(1)).optional(),
  /** Bounds of the warm pool that target_wait sizes (default 0 and max_vm_total). */
  min_ready_floor: z.number().int().nonnegative().optional(),
  min_ready_ceiling: z.number().int().nonnegative().optional(),
  /** Retire a dirty VM after this many builds (0: no limit). */
  reuse_max_count: z.number().int().nonnegative().default(0),
  /** Retire a dirty VM this many seconds after its first acquisition by its owner and sandbox (0: no limit). */
  reuse_max_time: seconds(0),
  /** Seconds an assignment lives without a renew. */
  lease_timeout: z.number().positive().default(300),
  /** What happens to a VM whose lease lapsed: its state is unknown, so it is terminated by default. */
  on_lease_expiry: z.enum(['terminate', 'release']).default('terminate'),
  /** Seconds a health check (connect and command) may take. */
  vm_ssh_check_timeout: z.number().positive().default(5),
  /** Seconds after which a spawn still in flight is taken as lost (its job died) and no longer counted. */
  vm_spawn_stale_timeout: z.number().positive().default(1800),
  /** How machines are made and destroyed (providers). */
  provider: providerConfigSchema.default({ type: 'local', port: 2222, ip_base: 77, spawn_timeout: 20 }),
  /** How a machine's health is checked. */
  check: checkConfigSchema.default({ type: 'ssh', user: 'root', host_key_policy: 'accept-new' }),
  /** Seconds between leak/orphan passes that compare the provider's list with the pool (0: never). */
  orphan_check_period: seconds(600),
  /** Seconds an unknown machine (or a pool VM still in got_ip) is left alone before cleanup. */
  orphan_grace_period: seconds(900),
}).superRefine((g, ctx) => {
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
});

export const redisConfigSchema = z.strictObject({
  url: z.string().min(1).default('redis://127.0.0.1:6379'),
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9_.{}-]+$/, 'letters, digits, and . _ - { } only')
    .default('vmpool'),
  /** Refuse to start when Redis's settings are unsafe for vmpool (see src/redisSafety.ts); else warn (default). */
  require_safe: z.boolean().optional(),
  /** The weakest appendfsync the operator accepts: always > everysec (default) > no. */
  appendfsync: z.enum(['always', 'everysec', 'no']).optional(),
  /**
   * A Redis Cluster instead of `url`: some of its nodes. The prefix must then carry a hash tag
   * (`{vmpool}`): one pool lives in one slot, so on one shard.
   */
  cluster: z.array(hostPortSchema(6379)).min(1).optional(),
  /** A master found through Redis Sentinel instead of `url`: its name and some sentinels. */
  sentinel: z
    .strictObject({
      name: z.string().min(1),
      sentinels: z.array(hostPortSchema(26379)).min(1),
      /** Credentials of the sentinels themselves, when they need them. */
      username: z.string().min(1).optional(),
      password: z.string().min(1).optional(),
    })
    .optional(),
  /** Credentials of the Redis servers (Cluster nodes, the Sentinel's master); a URL's user info wins. */
  username: z.string().min(1).optional(),
  password: z.string().min(1).optional(),
  /** TLS to the servers (and the sentinels): true, or a CA file and options. rediss:// says the same for a URL. */
  tls: z
    .union([
      z.boolean(),
      z.strictObject({
        ca: z.string().min(1).optional(),
        servername: z.string().min(1).optional(),
        reject_unauthorized: z.boolean().optional(),
      }),
    ])
    .optional(),
  /**
   * After each acquire and release, wait until this many replicas have the write (Redis WAIT), so
   * that an acknowledged assignment survives a failover. Off when absent.
   */
  wait_replicas: z.number().int().min(1).optional(),
  /** Seconds that WAIT may take before the acquire or release is answered anyway (default 0.5). */
  wait_timeout: z.number().positive().optional(),
});

function hostPortSchema(defaultPort: number) {
  return z.string().refine((v) => parseHostPort(v, defaultPort) !== null, 'host:port, such as 10.0.0.5:6379');
}

/** Scopes of API tokens: builder (acquire, release, renew) and admin (everything). */
export const webScopes = ['builder', 'admin'] as const;
export type WebScope = (typeof webScopes)[number];

/** The `web` process: API, pool page, Bull Board, metrics. Off loopback it needs a token. */
export const webConfigSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(8080),
  /** Bull Board shows the queues but cannot retry, remove or add jobs. */
  read_only_board: z.boolean().default(false),
  /**
   * Host names (or addresses) that requests may carry in their Host header besides loopback ones:
   * `ci.example.org`, or `*.example.org` for its subdomains. Any other Host is refused (DNS rebinding).
   */
  allowed_hosts: z.array(z.string().regex(/^(\*\.)?[A-Za-z0-9.:\[\]_-]+$/, 'a host name, an address, or *.domain')).default([]),
  /** The URL operators and builders reach the web process by (behind a proxy); its host is allowed. */
  public_url: z.url({ protocol: /^https?$/ }).optional(),
  auth: z
    .strictObject({
      /** Shorthand for one token with the admin scope. */
      token: z.string().min(16, 'a token of at least 16 characters').optional(),
      tokens: z
        .array(
          z.strictObject({
            name: z.string().min(1).optional(),
            token: z.string().min(16, 'a token of at least 16 characters'),
            scopes: z.array(z.enum(webScopes)).min(1),
            /**
             * Owners this token may acquire for (`*` matches any run of characters: `copr-*`).
             * Without it the token acts for any owner (one trusted dispatcher such as Copr's backend).
             */
            owners: z.array(z.string().min(1).max(255)).min(1).optional(),
          }),
        )
        .default([]),
    })
    .default({ tokens: [] }),
});
export type WebConfig = z.output<typeof webConfigSchema>;

export const configSchema = z.strictObject({
  redis: redisConfigSchema.default({ url: 'redis://127.0.0.1:6379', prefix: 'vmpool' }),
  /**
   * The pool's identity, which hooks get as VMPOOL_POOL_ID to tag and filter machines with (see
   * src/pool/poolId.ts). Without it, derived from the prefix.
   */
  pool_id: z.string().regex(POOL_ID_PATTERN, 'a letter or digit, then up to 127 letters, digits, . _ -').optional(),
  vm_cycle_timeout: z.number().positive().default(10),
  /** Seconds after which a hold ends by itself (nodepool's max-hold-age); 0: holds last until unheld. */
  max_hold_age: z.number().nonnegative().default(0),
  /** Seconds between the acquire line's safety sweeps (each acquire process dispatches every group and re-wakes served requests whose wake was lost). */
  acquire_safety_retry: z.number().positive().default(30),
  /** Worker concurrency per process type; <TYPE>_CONCURRENCY in the environment overrides. */
  concurrency: z
    .strictObject({
      acquire: positiveInt(50),
      spawn: positiveInt(4),
      health: positiveInt(20),
      terminate: positiveInt(4),
    })
    .default({ acquire: 50, spawn: 4, health: 20, terminate: 4 }),
  /**
   * BullMQ stalled-job recovery, for every worker (seconds): a job whose lock (lock_duration) is not
   * renewed, because its process died, goes back to waiting at a check (every stalled_interval), at
   * most max_stalled_count times; then it fails.
   */
  jobs: z
    .strictObject({
      lock_duration: z.number().positive().default(30),
      stalled_interval: z.number().positive().default(30),
      max_stalled_count: z.number().int().nonnegative().default(1),
    })
    .default({ lock_duration: 30, stalled_interval: 30, max_stalled_count: 1 }),
  /** The audit trail of VM lifecycle events (src/pool/audit.ts); absent: its defaults. */
  audit: z
    .strictObject({
      /** About how many events the trail keeps (older ones are trimmed); default 100000. */
      max_events: z.number().int().min(1).optional(),
    })
    .optional(),
  web: webConfigSchema.default({ host: '127.0.0.1', port: 8080, read_only_board: false, allowed_hosts: [], auth: { tokens: [] } }),
  /** Without it, the embedded default's group (local provider), so a file may set one thing only. */
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
    .prefault(() => structuredClone(embeddedGroups)),
});

export type GroupConfig = z.output<typeof groupConfigSchema>;
export type GroupInput = z.input<typeof groupConfigSchema>;
export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
