import { Document, isMap, isScalar, isSeq, type Node } from 'yaml';
import { configSchemaPath } from './jsonSchema.js';
import { parseConfig } from './parse.js';
import { embeddedConfig } from '../defaults.js';

const HEADER = `vmpool config: the embedded default (one group of local "VMs"), every option at its value,
and commented examples of the optional keys it leaves out (uncomment to use).
Edit what you need and delete the rest: a missing key takes its default, and without groups the
local group below applies. Check it with \`vmpool config check FILE\`. All timeouts are seconds.
Environment overrides: REDIS_URL, VMPOOL_PREFIX, PORT, HOST, <TYPE>_CONCURRENCY.`;

/** The line above the commented `accounts` example; test/config tests that the example parses. */
export const ACCOUNTS_EXAMPLE_INTRO = 'Replace {} with, for example:';

/** A commented example of `accounts` (YAML, as under the key). */
const ACCOUNTS_EXAMPLE = `  openstack-prod:
    max_resources: { cores: 64, instances: 20 }  # the pool's limits on this account, over every group naming it
    quota_cmd: [/etc/vmpool/hooks/quota.sh]      # optional: prints the cloud's own limits and usage as JSON (docs/providers.md)
    quota_cache: 300                             # seconds quota_cmd's answer is kept (in Redis) before it runs again`;

/** The line above the commented group keys; test/config tests that they parse once uncommented. */
export const GROUP_EXAMPLE_INTRO = 'Optional keys, with example values (uncomment to use; see docs/configuration.md):';

/** Commented examples of the group keys that the default leaves out (YAML, as in a group). */
const GROUP_EXAMPLE = `account: openstack-prod                # an account under \`accounts\`: its limits and cloud quota are shared by the groups naming it
max_resources: { cores: 32 }           # the group's limit in the units of \`resources\` (set them above), beside max_vm_total
max_resources_per_owner: { cores: 8 }  # one owner's limit in the group, in those units, beside max_vm_per_user
check_on_acquire: ssh                  # check each VM again right before it is handed out (the type of \`check\`); one that fails is replaced
fallback_groups: [ondemand]            # other groups of this config serve this one's requests while it is blocked (breaker open, full, quota_full)
image: fedora-41-x86_64                # hooks get it as VMPOOL_IMAGE; a change rolls the group over to new VMs
max_ready_age: 86400                   # seconds a clean ready VM may stay ready before it is replaced
breaker: { failures: 3, backoff: 60, max_backoff: 3600 }  # the spawn circuit breaker (these are its defaults)`;

/** Notes of the template, by dotted path (`*` for every item of a list). */
const NOTES: Record<string, string> = {
  redis:
    'REDIS_URL overrides url, VMPOOL_PREFIX overrides prefix.\n' +
    'A Redis Cluster: cluster: ["10.0.0.5:7000", ...] and a prefix with a {hash tag}, such as "{vmpool}"\n' +
    '  (or REDIS_URL=redis+cluster://user:password@h1:7000,h2:7000).\n' +
    'Redis Sentinel: sentinel: { name: mymaster, sentinels: ["10.0.0.5:26379", ...] }\n' +
    '  (or REDIS_URL=redis+sentinel://user:password@h1:26379,h2:26379/mymaster).\n' +
    'Optional: username, password, tls: true, wait_replicas: 1 (acquire and release wait for a replica)',
  'redis.prefix': 'key prefix of the pool and its queues; one per pool. The pool id (pool_id: ...), which\n' +
    'hooks get as VMPOOL_POOL_ID to tag and list machines by, is derived from it unless set',
  vm_cycle_timeout: 'seconds between reconcile cycles',
  max_hold_age:
    'seconds after which a hold ends by itself (0: holds last until unheld). Autohold rules (keep the\n' +
    'VMs of failed builds) are not config: `vmpool autohold add` (docs/capacity.md)',
  accounts:
    'cloud accounts: limits in resource units, and the cloud\'s own quota, shared by the groups that\n' +
    `name one in \`account\`. ${ACCOUNTS_EXAMPLE_INTRO}\n${ACCOUNTS_EXAMPLE}`,
  acquire_safety_retry: 'seconds between the acquire line\'s safety sweeps (a lost wake is repaired then)',
  concurrency: 'jobs at once per worker process; <TYPE>_CONCURRENCY overrides (HEALTH_CONCURRENCY=50)',
  jobs: 'BullMQ stalled-job recovery, for every worker',
  'jobs.lock_duration': 'a dead process\'s active job is recovered after its lock lapses',
  'jobs.stalled_interval': 'seconds between stalled-job checks',
  'jobs.max_stalled_count': 'recoveries of one job before it fails',
  web:
    'the web process (API, pool page, Bull Board, metrics); PORT and HOST override port and host.\n' +
    'Off loopback, or with public_url or allowed_hosts, it needs a token:\n' +
    '  auth: { token: "...admin token, 16+ characters..." }\n' +
    '  auth: { tokens: [{ name: ci, token: "...", scopes: [builder], owners: ["ci-*"] }] }\n' +
    '  auth: { tokens: [{ name: prometheus, token: "...", scopes: [read] }] }\n' +
    'Behind a proxy (with a token): public_url: https://vmpool.example.org/',
  'web.host': 'loopback may run open; any other address needs a token',
  'web.read_only_board': 'Bull Board shows the queues but cannot change them',
  'web.allowed_hosts': 'Host names served besides loopback ones, such as [vmpool.example.org, "*.farm.example.org"]',
  groups: 'build groups (Copr\'s build_groups); a group\'s id is its index',
  'groups.*.archs': 'an acquire by arch picks the groups listing it',
  'groups.*.max_vm_total': 'VMs of the group, not counting terminating or failed ones',
  'groups.*.max_vm_per_user': 'VMs of the group bound to one owner',
  'groups.*.resources': 'what one VM uses, in units you name, such as { cores: 4, ram_mb: 8192 }; every VM also uses 1 instance',
  'groups.*.max_waiting_per_owner': "acquire requests of one owner waiting in the group's line; beyond it: 429, exit 5",
  'groups.*.max_spawn_processes': 'spawns in flight',
  'groups.*.vm_spawn_min_interval': 'seconds between spawn starts',
  'groups.*.vm_dirty_terminating_timeout': 'a released (dirty) VM not re-acquired by then is terminated',
  'groups.*.vm_health_check_period': 'seconds between health checks of a VM',
  'groups.*.vm_health_check_max_time': 'a check that never reports back is failed after this',
  'groups.*.vm_max_check_fails': 'terminated once check fails exceed this',
  'groups.*.vm_terminating_timeout': 'termination is requested again after this',
  'groups.*.min_ready': 'clean ready VMs kept waiting (warm pool)',
  'groups.*.reuse_max_count': 'retire a dirty VM after this many builds (0: no limit)',
  'groups.*.reuse_max_time': '... or this many seconds in one sandbox (0: no limit)',
  'groups.*.lease_timeout': 'an assignment lapses without a renew',
  'groups.*.launch_revision': 'bump it to roll the group over to new VMs (part of the launch fingerprint)',
  'groups.*.on_lease_expiry': 'terminate, or release',
  'groups.*.vm_ssh_check_timeout': 'seconds a health check may take',
  'groups.*.vm_spawn_stale_timeout': 'a spawn still in flight after this is taken as lost',
  'groups.*.provider':
    'how machines are made: local (detached local processes serving SSH on 127.x), or\n' +
    '  provider: { type: command, spawn_cmd: /etc/vmpool/spawn.sh, terminate_cmd: /etc/vmpool/terminate.sh }\n' +
    '(its ssh check then needs check.private_key; see docs/providers.md for the hooks)',
  'groups.*.check': 'how health is checked: ssh (echo hello), tcp { port }, command { cmd }, or provider',
  'groups.*.check_on_acquire_timeout': 'seconds the check at hand-over (check_on_acquire, below) may take',
  'groups.*.orphan_check_period': 'seconds between leak passes, with a provider list_cmd (0: never)',
  'groups.*.orphan_grace_period': 'seconds an unknown machine is left alone',
};

function annotate(node: unknown, path: string[]): void {
  if (isSeq(node)) {
    for (const item of node.items) annotate(item, [...path, '*']);
    return;
  }
  if (!isMap(node)) return;
  for (const pair of node.items) {
    const key = pair.key as Node;
    const at = [...path, String(isScalar(key) ? key.value : key)];
    const note = NOTES[at.join('.')];
    if (note !== undefined) {
      // A scalar on one line takes its note at the end of the line; anything else above its key.
      if (isScalar(pair.value) && !note.includes('\n')) pair.value.comment = ` ${note}`;
      else key.commentBefore = note.replace(/^/gm, ' ');
    }
    annotate(pair.value, at);
  }
}

/**
 * The embedded default as YAML to edit (`vmpool config init`): every option at its value, with a
 * note on each. It loads as exactly the embedded default (web.auth left out: no tokens). Its first
 * line points editors (yaml-language-server) at the JSON Schema, by default the installed
 * package's own file, so that they validate and complete the file.
 */
export function configTemplate(schemaRef: string = configSchemaPath()): string {
  const config = parseConfig(embeddedConfig, {});
  const { auth: _auth, ...web } = config.web;
  const doc = new Document({ ...config, web });
  doc.commentBefore = HEADER.replace(/^/gm, ' ');
  annotate(doc.contents, []);
  // After each group's last key: the group keys that the default leaves out.
  const groups = doc.get('groups');
  if (isSeq(groups)) for (const g of groups.items) if (isMap(g)) g.comment = `${GROUP_EXAMPLE_INTRO}\n${GROUP_EXAMPLE}`.replace(/^/gm, ' ');
  return `# yaml-language-server: $schema=${schemaRef}\n${doc.toString({ lineWidth: 0 })}`;
}
