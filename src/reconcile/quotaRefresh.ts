/**
 * Runs each account's quota_cmd when its cached answer (shared by every replica in Redis) is older
 * than quota_cache, and gives what the pool's own VMs may use of each account.
 */
import type { AccountConfig } from '../config/schemas.js';
import { configSecrets } from '../config/redaction.js';
import type { Logger } from '../logger.js';
import type { VmManager } from '../pool/vmManager.js';
import { describeEnd, runHook, toArgv } from '../providers/hook.js';
import { maskSecrets } from '../text/redact.js';
import { accountLimitsForPool, parseQuotaReport, type QuotaReport, type Resources } from './quota.js';

/** Bytes of quota_cmd's output kept: a quota report is small; more is refused. */
const QUOTA_KEEP_BYTES = 64 * 1024;

/** Runs quota_cmd once; throws an Error with what went wrong (secrets masked). */
export async function runQuotaCmd(account: string, config: AccountConfig, deps: { poolId: string; secrets: readonly string[]; logger: Logger }): Promise<QuotaReport> {
  const timeoutMs = config.quota_timeout * 1000;
  const result = await runHook({
    argv: toArgv(config.quota_cmd!),
    env: { VMPOOL_POOL_ID: deps.poolId, VMPOOL_ACCOUNT: account, ...config.env },
    passEnv: config.pass_env,
    secrets: deps.secrets,
    timeoutMs,
    killGraceMs: config.kill_grace * 1000,
    logger: deps.logger.child({ account }),
    label: 'quota_cmd',
    keepBytes: QUOTA_KEEP_BYTES,
  });
  if (result.startError || result.timedOut || result.code !== 0) {
    const tail = result.tail.length > 0 ? `: ${result.tail.slice(-5).join(' | ')}` : '';
    throw new Error(`quota_cmd of account ${account} ${describeEnd(result, timeoutMs)}${tail}`);
  }
  if (result.truncated) throw new Error(`quota_cmd of account ${account} printed more than ${QUOTA_KEEP_BYTES} bytes`);
  try {
    return parseQuotaReport(maskSecrets(result.stdout, deps.secrets));
  } catch (err) {
    throw new Error(`account ${account}: ${(err as Error).message}`);
  }
}

/**
 * What the pool's own VMs may use of each account with limits: its max_resources, and with a
 * quota_cmd, the cloud's limits less foreign usage from the cached answer, refreshed first when
 * older than quota_cache. A quota_cmd that fails or prints a bad report is logged and changes
 * nothing: the last answer stays in force until it expires (10 quota_cache periods), then only
 * max_resources counts.
 */
export async function readAccountLimits(vmm: VmManager, logger: Logger, now: number): Promise<Map<string, Resources>> {
  const out = new Map<string, Resources>();
  const used = new Set(vmm.config.groups.map((g) => g.account).filter((a): a is string => a !== undefined));
  for (const [account, config] of Object.entries(vmm.config.accounts)) {
    if (!used.has(account)) continue;
    let cached = config.quota_cmd ? await vmm.quotas.cached(account) : null;
    if (config.quota_cmd && (cached === null || now - cached.fetchedAt >= config.quota_cache * 1000)) {
      try {
        const report = await runQuotaCmd(account, config, { poolId: vmm.poolId, secrets: configSecrets(vmm.config), logger });
        await vmm.quotas.store(account, report, now, config.quota_cache);
        cached = { report, fetchedAt: now };
        logger.debug({ account, report }, 'quota_cmd answered');
      } catch (err) {
        logger.error({ account, err: (err as Error).message }, 'quota_cmd failed; the last answer stays in force');
      }
    }
    out.set(account, accountLimitsForPool(config.max_resources, cached?.report ?? null));
  }
  return out;
}
