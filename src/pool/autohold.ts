import { z } from 'zod';
import type { PoolContext } from './context.js';
import { RELEASE_OUTCOMES, type ReleaseOutcome } from './poolScripts.js';
import { InvalidVmRequest } from './types.js';

export { RELEASE_OUTCOMES, type ReleaseOutcome } from './poolScripts.js';

export interface ReleaseOptions {
  /** How the build ended: `failed` lets an autohold rule keep the VM. Absent: not said (as `success`). */
  outcome?: ReleaseOutcome | undefined;
}

/** The outcome a release gives, checked: InvalidVmRequest for anything but success or failed. */
export function releaseOutcomeOf(outcome: unknown): ReleaseOutcome | undefined {
  if (outcome === undefined || outcome === null) return undefined;
  if (typeof outcome === 'string' && (RELEASE_OUTCOMES as readonly string[]).includes(outcome)) return outcome as ReleaseOutcome;
  throw new InvalidVmRequest(`a release outcome is ${RELEASE_OUTCOMES.join(' or ')} (got ${JSON.stringify(outcome)})`);
}

const glob = (what: string) =>
  z
    .string()
    .max(255)
    .regex(/^[^\s]*$/, 'a pattern without spaces')
    .default('*')
    .describe(`${what} pattern: \`*\` matches any run of characters, \`?\` one; default \`*\``);

/** What an operator gives to add a rule. */
export const autoholdRuleInputSchema = z.strictObject({
  owner: glob('Owner'),
  sandbox: glob('Sandbox'),
  group: glob('Group name'),
  count: z.number().int().min(1).max(1000).describe('How many failed builds\' VMs the rule holds; it runs down by one at each'),
  for: z.number().positive().optional().describe('Seconds each VM is held (capped by max_hold_age); absent: until unheld (or max_hold_age)'),
  reason: z.string().min(1).max(1024).describe('Why: shown with the hold'),
});
export type AutoholdRuleInput = z.input<typeof autoholdRuleInputSchema>;

/** A stored rule (the hash autohold_rules; includes/autohold.lua reads and runs it down). */
export interface AutoholdRule {
  id: number;
  owner: string;
  sandbox: string;
  group: string;
  /** Failed builds' VMs it still holds. */
  count: number;
  /** Seconds each VM is held; absent: until unheld. */
  for?: number;
  reason: string;
  /** Who added it. */
  by: string;
  /** When it was added (epoch ms). */
  created_at: number;
}

/**
 * Autohold rules (Zuul's autohold): a failed build's VM that a rule matches is held instead of
 * returned to the pool. The release script applies them and runs their count down; adding and
 * deleting a rule is one command each.
 */
export class Autoholds {
  constructor(private readonly ctx: PoolContext) {}

  /** Adds a rule; InvalidVmRequest when the input is not one (nothing stored). */
  async add(input: unknown, by: string): Promise<AutoholdRule> {
    const parsed = autoholdRuleInputSchema.safeParse(input);
    if (!parsed.success) {
      throw new InvalidVmRequest(`not an autohold rule: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(rule)'}: ${i.message}`).join('; ')}`);
    }
    if (typeof by !== 'string' || by === '') throw new InvalidVmRequest('an autohold rule needs who adds it');
    const r = parsed.data;
    const maxAge = this.ctx.config.max_hold_age;
    const holdFor = maxAge > 0 ? Math.min(r.for ?? Infinity, maxAge) : r.for;
    const id = await this.ctx.redis.incr(this.ctx.keys.autoholdSeq);
    const rule: AutoholdRule = {
      id,
      owner: r.owner,
      sandbox: r.sandbox,
      group: r.group,
      count: r.count,
      ...(holdFor !== undefined ? { for: holdFor } : {}),
      reason: r.reason,
      by,
      created_at: this.ctx.clock(),
    };
    await this.ctx.redis.hset(this.ctx.keys.autoholdRules, String(id), JSON.stringify(rule));
    this.ctx.logger.info({ rule }, 'autohold rule added');
    return rule;
  }

  /** The rules with a count left, by id. */
  async list(): Promise<AutoholdRule[]> {
    const all = await this.ctx.redis.hgetall(this.ctx.keys.autoholdRules);
    const rules: AutoholdRule[] = [];
    for (const raw of Object.values(all)) {
      try {
        rules.push(JSON.parse(raw) as AutoholdRule);
      } catch {
        // Not a rule: the release script skips it too.
      }
    }
    return rules.sort((a, b) => a.id - b.id);
  }

  /** Deletes a rule; false when there is none of that id. VMs it holds stay held. */
  async delete(id: number): Promise<boolean> {
    if (!Number.isSafeInteger(id) || id < 1) throw new InvalidVmRequest(`an autohold rule id is a positive integer (got ${JSON.stringify(id)})`);
    const deleted = (await this.ctx.redis.hdel(this.ctx.keys.autoholdRules, String(id))) === 1;
    if (deleted) this.ctx.logger.info({ id }, 'autohold rule deleted');
    return deleted;
  }
}
