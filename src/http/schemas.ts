import { z } from 'zod';
import { ACQUIRE_REQUEST_STATES } from '../acquire/requests.js';
import { WAIT_REASONS } from '../acquire/why.js';
import { RELEASE_OUTCOMES, autoholdRuleInputSchema } from '../pool/autohold.js';
import { SPAWN_ERROR_CLASSES, UNCLASSIFIED } from '../providers/spawnErrors.js';
import { AcquireFailures, acquireRequestSchema, groupsOrArch } from '../../queues/acquire.js';

// The API's request bodies and enums as zod schemas: the routes (api.ts) validate with them, and the
// OpenAPI document (openapi.ts) takes their JSON Schemas from here, so each is written once.

/** Schemas that the OpenAPI document lists under components.schemas, by their id there. */
export const apiSchemaRegistry = z.registry<{ id: string }>();

const acquireFields = acquireRequestSchema.shape;

export const acquireGroupsSchema = z
  .array(z.union([z.number().int().nonnegative(), z.string().min(1)]))
  .min(1)
  .describe('group names (or indexes in the config, resolved by the web process), tried in order')
  .register(apiSchemaRegistry, { id: 'AcquireGroups' });
export const acquireArchSchema = acquireFields.arch.unwrap().describe('every group listing this arch, in config order')
  .register(apiSchemaRegistry, { id: 'AcquireArch' });
export const acquireTagsSchema = acquireFields.tags
  .unwrap()
  .describe('capabilities a group must all list (config tags); an unknown tag is a 400')
  .register(apiSchemaRegistry, { id: 'AcquireTags' });

/**
 * The body of POST /acquire: the acquire job's payload (acquireRequestSchema); the route turns
 * group indexes into names (the job in Redis names its groups) and validates the payload.
 */
export const acquireBodySchema = z
  .strictObject({
    ...acquireFields,
    groups: acquireGroupsSchema.optional(),
    arch: acquireArchSchema.optional(),
    tags: acquireTagsSchema.optional(),
    timeoutMs: acquireFields.timeoutMs.describe(
      'How long to wait for a VM, in ms. Jobs default to 10 minutes; POST /acquire defaults to 55 s, under the 60 s that common proxies and clients allow.',
    ),
    strictGroup: acquireFields.strictGroup.describe('Only the groups asked for serve it, never their fallback_groups'),
    strict_group: acquireFields.strict_group.describe('The same as strictGroup'),
  })
  .describe('Groups (ids or names) or arch, not both; and/or tags that a group must all list. The vm-acquire job payload takes group ids only.')
  .register(apiSchemaRegistry, { id: 'AcquireRequest' });

/** One VM of POST /acquire-set: groups (ids or names) or arch, not both; and/or tags, as in POST /acquire. */
export const acquireSetItemSchema = z
  .strictObject({ groups: acquireGroupsSchema.optional(), arch: acquireArchSchema.optional(), tags: acquireTagsSchema.optional() })
  .refine(...groupsOrArch)
  .describe('One VM of the set: groups (ids or names, tried in order) or arch, not both; and/or tags')
  .register(apiSchemaRegistry, { id: 'AcquireSetItem' });

/** The body of POST /acquire-set: several VMs for one owner and sandbox, all or nothing. */
export const acquireSetBodySchema = z
  .strictObject({
    owner: acquireFields.owner,
    sandbox: acquireFields.sandbox,
    vms: z.array(acquireSetItemSchema).min(1).max(32).describe('The VMs asked for (at most 32), each from its own groups'),
    requestId: z
      .string()
      .min(1)
      .max(255)
      .optional()
      .describe('Identity of the request: asking again with it (a retry after a lost answer) gets the same VMs while their first lease term lasts'),
    timeoutMs: acquireFields.timeoutMs.describe('How long to wait for the whole set, in ms (default 55 s)'),
    strictGroup: acquireFields.strictGroup.describe("Every VM only from the groups it lists, never from their fallback_groups"),
    strict_group: acquireFields.strict_group.describe('The same as strictGroup'),
  })
  .describe('Several VMs at once, all or nothing: none is held while the rest cannot be had')
  .register(apiSchemaRegistry, { id: 'AcquireSetRequest' });

export const leaseBodySchema = z.strictObject({ leaseId: z.string().min(1).max(255) }).register(apiSchemaRegistry, { id: 'LeaseRequest' });
export const releaseBodySchema = z
  .strictObject({
    leaseId: z.string().min(1).max(255).optional().describe('Required for builder tokens; an admin may omit it.'),
    outcome: z.enum(RELEASE_OUTCOMES).optional().describe("How the build ended: `failed` lets an autohold rule keep the VM for debugging"),
  })
  .register(apiSchemaRegistry, { id: 'ReleaseRequest' });
export const autoholdBodySchema = autoholdRuleInputSchema.register(apiSchemaRegistry, { id: 'AutoholdRequest' });
export const holdBodySchema = z
  .strictObject({
    by: z.string().min(1).max(255).optional().describe('Default: the token name.'),
    reason: z.string().min(1).max(1024).optional(),
    for: z.number().positive().max(366 * 86_400).optional().describe('seconds the hold lasts (not with until)'),
    until: z
      .union([z.iso.datetime({ offset: true }), z.number().int().positive()])
      .optional()
      .describe('when the hold ends: ISO 8601 or epoch ms (not with for)'),
  })
  .refine((b) => b.for === undefined || b.until === undefined, { message: 'give for or until, not both' })
  .describe('config max_hold_age caps every hold, and ends one that names no end')
  .register(apiSchemaRegistry, { id: 'HoldRequest' });
/** The body of POST /groups/{group}/rename. */
export const renameBodySchema = z
  .strictObject({ to: z.string().min(1).max(64).describe("the group's new name (new to the pool)") })
  .describe('renames the group in place, with its VMs; deploy the config with the new name next')
  .register(apiSchemaRegistry, { id: 'RenameRequest' });

/** The body of routes that take none: nothing, or `{}`. */
export const emptyBodySchema = z.strictObject({});

export const waitReasonSchema = z.enum(WAIT_REASONS).describe('why a request waits in a group (src/acquire/why.ts)')
  .register(apiSchemaRegistry, { id: 'WaitReason' });
export const spawnErrorClassSchema = z
  .enum([...SPAWN_ERROR_CLASSES, UNCLASSIFIED])
  .describe('why spawns failed, as the provider hook classified it')
  .register(apiSchemaRegistry, { id: 'SpawnErrorClass' });
export const acquireRequestStateSchema = z
  .enum(ACQUIRE_REQUEST_STATES)
  .describe('queued (no acquire worker took it yet), waiting (in the line), assigned, or failed')
  .register(apiSchemaRegistry, { id: 'AcquireRequestState' });
export const acquireFailureSchema = z
  .enum(Object.values(AcquireFailures) as [string, ...string[]])
  .describe('why an acquire request failed')
  .register(apiSchemaRegistry, { id: 'AcquireFailure' });

/** groups or arch, not both; or tags alone (acquireRequestSchema's refine). */
const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const ACQUIRE_BODY_CHOICE = {
  anyOf: [
    { required: ['groups'], properties: { groups: ref('AcquireGroups') } },
    { required: ['arch'], properties: { arch: ref('AcquireArch') } },
    { required: ['tags'], properties: { tags: ref('AcquireTags') } },
  ],
  not: { required: ['groups', 'arch'], properties: { groups: ref('AcquireGroups'), arch: ref('AcquireArch') } },
};

/** The JSON Schemas of the registered schemas (request side), for the OpenAPI document's components. */
export function apiComponentSchemas(): Record<string, Record<string, unknown>> {
  const { schemas } = z.toJSONSchema(apiSchemaRegistry, {
    target: 'draft-2020-12',
    io: 'input',
    uri: (id) => `#/components/schemas/${id}`,
    override: (ctx) => {
      // The refine of acquireRequestSchema, which zod cannot express in JSON Schema.
      if (ctx.zodSchema === acquireBodySchema) Object.assign(ctx.jsonSchema, ACQUIRE_BODY_CHOICE);
    },
  });
  const out: Record<string, Record<string, unknown>> = {};
  for (const [id, schema] of Object.entries(schemas)) {
    // OpenAPI 3.1 documents take the 2020-12 dialect as given: no $schema or $id per schema.
    const { $schema: _schema, $id: _id, ...rest } = schema as Record<string, unknown>;
    out[id] = rest;
  }
  return out;
}
