import { AUDIT_PAGE_MAX, auditEventTypes } from '../pool/audit.js';
import { ALL_VM_STATES } from '../pool/types.js';
import { ErrorCodes } from './errors.js';
import { apiComponentSchemas } from './schemas.js';

const error = (description: string) => ({ description, content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } });
const json = (description: string, ref: string) => ({ description, content: { 'application/json': { schema: { $ref: `#/components/schemas/${ref}` } } } });
const nameParam = { name: 'name', in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' } };
const groupParam = { name: 'group', in: 'path', required: true, description: 'group name, or its index in the config', schema: { type: 'string', minLength: 1 } };
const common = {
  '400': error('Invalid request'),
  '401': error('Missing or invalid token'),
  '403': error('Token lacks the scope, or may not act for the owner'),
  '421': error('The Host header names no host of this server (web.allowed_hosts)'),
};
const vmResponses = { ...common, '404': error('No such VM'), '409': error('Wrong state, lease or hold') };
/** POST and DELETE need Content-Type: application/json, also without a body (no cross-site form posts). */
const notJson = { '415': error('Content-Type is not application/json') };
// Every change: a web process older than the pool's data format (or that could not read it yet) takes none.
const noChanges = {
  '503': error("This web process takes no change: the pool's data format is newer than it knows, or not read yet (details.reason data_format_too_new with needed and known, or data_format_unchecked); reads go on"),
};
const vmWriteResponses = { ...vmResponses, ...notJson, ...noChanges };
const nullable = (type: string) => ({ type: [type, 'null'] });
const requestIdParam = {
  name: 'id',
  in: 'path',
  required: true,
  description: "acquire job id (acquire-... for one VM, set-... for a set), or a task id or a set's requestId",
  schema: { type: 'string', minLength: 1, maxLength: 600 },
};
const requestOwnerParam = {
  name: 'owner',
  in: 'query',
  schema: { type: 'string' },
  description: 'the owner of the task id or request id (they are per owner); without it, the one owner the token may act for that has a request of that id',
};
const builder = [{ bearer: ['builder'] }];
const admin = [{ bearer: ['admin'] }];
// A read token may call every GET (admin may call everything: src/http/scopes.ts).
const read = [{ bearer: ['read'] }];
const readOrBuilder = [{ bearer: ['builder'] }, { bearer: ['read'] }];

/** The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json. */
export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'vmpool API',
    version: '1',
    license: { name: 'MIT', identifier: 'MIT' },
    description:
      'Acquire, renew and release build VMs; inspect and steer the pool. Errors are { error, message, details }. ' +
      'With tokens configured, send Authorization: Bearer <token>; read tokens may call every GET, builder tokens may acquire, renew and release, admin tokens everything. ' +
      'Every POST and DELETE needs Content-Type: application/json, also without a body (415 otherwise).',
  },
  servers: [{ url: '/api/v1' }],
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    schemas: {
      Error: {
        type: 'object',
        required: ['error', 'message', 'details'],
        properties: {
          error: { type: 'string', enum: Object.keys(ErrorCodes) },
          message: { type: 'string' },
          details: { type: 'object' },
        },
      },
      ...apiComponentSchemas(),
      Assignment: {
        type: 'object',
        required: ['vmName', 'vmIp', 'group', 'leaseId', 'leaseExpiresAt'],
        properties: {
          vmName: { type: 'string' },
          vmIp: { type: 'string' },
          group: { type: 'string', description: "the group's name" },
          leaseId: { type: 'string' },
          leaseExpiresAt: { type: 'integer', description: 'epoch ms' },
          requestedAt: { type: 'integer', description: 'when the acquire request was enqueued, epoch ms' },
        },
      },
      Renewed: { type: 'object', properties: { vmName: { type: 'string' }, leaseId: { type: 'string' }, leaseExpiresAt: { type: 'integer' } } },
      Vm: {
        type: 'object',
        properties: {
          vmName: { type: 'string' },
          vmIp: { type: 'string' },
          group: { type: 'string', description: "the group's name" },
          groupName: { type: 'string', description: 'the same as group (kept: it came first)' },
          groupIndex: { ...nullable('integer'), description: "the group's index in the config's list; null once it left the config" },
          state: { type: 'string', enum: [...ALL_VM_STATES] },
          owner: { ...nullable('string'), description: 'the owner the VM belongs to since its first acquire (counts for max_vm_per_user); null while clean' },
          boundToUser: { ...nullable('string'), deprecated: true, description: 'the same as owner, kept for clients written before it' },
          sandbox: nullable('string'),
          usedByWorker: nullable('string'),
          taskId: nullable('string'),
          buildId: nullable('string'),
          chroot: nullable('string'),
          inUseSince: nullable('integer'),
          lastHealthCheck: nullable('integer'),
          checkFails: { type: 'integer' },
          lastRelease: nullable('integer'),
          buildsCount: { type: 'integer' },
          terminatingSince: nullable('integer'),
          boundSince: nullable('integer'),
          leaseExpiresAt: nullable('integer'),
          heldBy: nullable('string'),
          heldSince: nullable('integer'),
          heldUntil: { ...nullable('integer'), description: 'when the hold ends by itself, epoch ms' },
          holdReason: nullable('string'),
          addedAt: { ...nullable('integer'), description: 'when the VM entered the pool, epoch ms' },
          launchFingerprint: { ...nullable('string'), description: 'fingerprint of the launch config that spawned it; null when added by hand (never rolled out)' },
          firstReadyAt: { ...nullable('integer'), description: 'when it first passed a check and became ready, epoch ms (max_ready_age counts from it); null in a group without max_ready_age' },
        },
      },
      AuditEvent: {
        type: 'object',
        required: ['id', 'event', 'vm', 'time', 'group', 'owner', 'sandbox', 'task', 'lease', 'reason', 'details'],
        properties: {
          id: { type: 'string', description: 'stream entry id <ms>-<seq>: a cursor for since' },
          event: { type: 'string', enum: [...auditEventTypes] },
          vm: { type: 'string' },
          time: { type: 'integer', description: 'epoch ms' },
          group: nullable('integer'),
          owner: nullable('string'),
          sandbox: nullable('string'),
          task: nullable('string'),
          lease: nullable('string'),
          reason: { ...nullable('string'), description: 'why: a termination reason, a hold reason' },
          details: { type: 'object', additionalProperties: { type: 'string' }, description: 'by, until (held); worker (acquired); ip (spawned); check_fails; lease_expires_at (lease_renewed); action (lease_expired)' },
        },
      },
      AuditPage: {
        type: 'object',
        required: ['events', 'next', 'more'],
        properties: {
          events: { type: 'array', items: { $ref: '#/components/schemas/AuditEvent' } },
          next: { ...nullable('string'), description: 'pass as since for the next page (or later, for newer events)' },
          more: { type: 'boolean', description: 'more events were there when read' },
        },
      },
      AcquireRequestStatus: {
        type: 'object',
        required: ['id', 'kind', 'owner', 'state', 'groups'],
        properties: {
          id: { type: 'string' },
          kind: { type: 'string', enum: ['acquire', 'acquire-set'], description: 'one VM (POST /acquire), or several at once (POST /acquire-set)' },
          taskId: nullable('string'),
          requestId: { ...nullable('string'), description: "a set's requestId" },
          owner: { type: 'string' },
          sandbox: { type: 'string' },
          state: { $ref: '#/components/schemas/AcquireRequestState' },
          jobState: { type: 'string' },
          priority: { type: 'integer' },
          requestedAt: { type: 'integer' },
          deadline: { type: 'integer' },
          groups: { type: 'array', items: { type: 'string' }, description: "group names (a set: every item's, each once)" },
          items: {
            type: ['array', 'null'],
            description: "a set's VMs as asked, in order: each one's group names; null for one VM",
            items: { type: 'object', properties: { groups: { type: 'array', items: { type: 'string' } } } },
          },
          waiting: {
            type: ['object', 'null'],
            description:
              'while it waits, why: reason (in its first group), groups (the reason and place in each), updatedAt; a set adds set (its VM count) and unavailableVms (its VMs that cannot be had now, 1-based, with their groups)',
            properties: {
              reason: { $ref: '#/components/schemas/WaitReason' },
              updatedAt: { type: 'integer' },
              groups: { type: 'array', items: { type: 'object', additionalProperties: true } },
              set: { type: 'integer', description: 'a set: how many VMs it asks for' },
              unavailableVms: {
                type: 'array',
                description:
                  "a set: its VMs that cannot be had now, each by its place in `vms` (1-based) with the groups it could use; empty when all could be had but the set waits for its turn in the line",
                items: {
                  type: 'object',
                  required: ['index', 'groups'],
                  properties: { index: { type: 'integer', minimum: 1 }, groups: { type: 'array', items: { type: 'string' } } },
                },
              },
            },
          },
          assignment: { type: ['object', 'null'], additionalProperties: true, description: 'the VM given (without its lease id); null for a set' },
          vms: { type: ['array', 'null'], items: { type: 'object', additionalProperties: true }, description: "a served set's VMs in the order asked (without lease ids); null otherwise" },
          failure: { type: ['object', 'null'], properties: { code: { oneOf: [{ $ref: '#/components/schemas/AcquireFailure' }, { type: 'null' }] }, reason: { type: 'string' } } },
        },
      },
      AutoholdRule: {
        type: 'object',
        properties: {
          id: { type: 'integer' },
          owner: { type: 'string', description: 'glob' },
          sandbox: { type: 'string', description: 'glob' },
          group: { type: 'string', description: 'glob of group names' },
          count: { type: 'integer', description: "failed builds' VMs it still holds" },
          for: { type: 'number', description: 'seconds each VM is held; absent: until unheld (or max_hold_age)' },
          reason: { type: 'string' },
          by: { type: 'string', description: 'who added it' },
          created_at: { type: 'integer', description: 'epoch ms' },
        },
      },
      VmAction: { type: 'object', properties: { vm: { $ref: '#/components/schemas/Vm' } }, additionalProperties: true },
      Group: {
        type: 'object',
        properties: {
          id: { ...nullable('integer'), description: "the group's index in the config's list (an alias; groups are identified by name); null once it left the config" },
          name: { type: 'string', description: "the group's identity: its keys, jobs and records carry it" },
          removedFromConfig: { type: 'boolean', description: 'the group left the config and drains: it spawns nothing, its VMs are served to requests that name it until they retire' },
          archs: { type: 'array', items: { type: 'string' } },
          tags: { type: 'array', items: { type: 'string' } },
          limits: {
            type: 'object',
            properties: {
              max_vm_total: { type: 'integer' },
              max_vm_per_user: { type: 'integer' },
              max_spawn_processes: { type: 'integer' },
              owner_vm_limit: { type: 'integer', description: 'the VMs one owner may have bound: max_vm_per_user, or fewer by max_resources_per_owner' },
            },
          },
          minReady: { type: 'integer', description: 'the warm-pool target in force now' },
          minReadyScheduled: { type: 'boolean', description: 'min_ready follows a schedule' },
          counts: { type: 'object', additionalProperties: { type: 'integer' } },
          total: { type: 'integer' },
          held: { type: 'integer' },
          readyClean: { type: 'integer' },
          demand: { type: 'integer' },
          spawnsInFlight: { type: 'integer' },
          breaker: {
            type: ['object', 'null'],
            description: "the group's spawn circuit breaker while it is open (no spawns but one probe); null while closed",
            properties: {
              errorClass: { $ref: '#/components/schemas/SpawnErrorClass' },
              failures: { type: 'integer' },
              openings: { type: 'integer' },
              openedAt: { type: ['integer', 'null'] },
              openUntil: { type: ['integer', 'null'], description: 'when the probe may run (epoch ms); null: until `vmpool breaker reset`' },
              message: { type: ['string', 'null'] },
            },
          },
          quotaFull: {
            type: ['object', 'null'],
            description: "while the group's spawns wait for resources (requests wait as quota_full); null otherwise",
            properties: {
              limit: { type: 'string', enum: ['group', 'account'], description: "whose limit: the group's max_resources, or its account's (configured or the cloud's quota)" },
              units: { type: 'array', items: { type: 'string' }, description: 'the resource units one more VM would pass' },
              account: { ...nullable('string'), description: "the group's account" },
              since: { type: 'integer', description: 'when reconcile last found it, epoch ms' },
            },
          },
          targetWait: {
            type: 'object',
            description: 'for a group with target_wait: what sized its warm pool (minReady is the result)',
            properties: {
              target: { type: 'string', description: 'the target, such as "p95 30s"' },
              arrivalsPerMinute: { type: 'number' },
              bootSeconds: { type: 'number' },
              bootMeasured: { type: 'boolean', description: 'false while bootSeconds is the default guess' },
              minReady: { type: 'integer' },
            },
          },
          drained: { type: 'boolean', description: 'spawns nothing: drained at run time (drainedSince) or by max_vm_total: 0; its VMs are still served' },
          drainedSince: { ...nullable('integer'), description: 'when a run-time drain began, epoch ms' },
          launch: {
            type: 'object',
            description: "the group's launch configuration: its current fingerprint and the VMs still on older ones (a rollout)",
            properties: {
              configured: { type: 'string', description: "the fingerprint of this web process's config of the group" },
              current: { ...nullable('string'), description: 'the current fingerprint, published by a reconcile process; null before its first cycle' },
              revision: { ...nullable('integer'), description: 'how many times the current fingerprint changed' },
              launchRevision: nullable('integer'),
              publishedAt: { ...nullable('integer'), description: 'epoch ms' },
              publishedBy: { ...nullable('string'), description: 'the publishing process, host:pid:random' },
              outdated: { type: 'integer', description: 'VMs (not terminating) on an older launch' },
              deferring: {
                type: 'array',
                description: 'processes seen running another launch config of the group: they make no decision for it',
                items: { type: 'object', properties: { process: { type: 'string' }, fingerprint: { type: 'string' } } },
              },
            },
          },
        },
      },
      DrainResult: {
        type: 'object',
        properties: {
          drained: { type: 'boolean', description: 'true after POST, false after DELETE' },
          changed: { type: 'boolean', description: 'false when the group already was (or was not) drained' },
          group: { $ref: '#/components/schemas/Group' },
        },
      },
    },
  },
  paths: {
    '/acquire': {
      post: {
        operationId: 'acquireVm',
        summary: 'Wait up to timeoutMs for a VM and return the assignment',
        security: builder,
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/AcquireRequest' } } } },
        responses: {
          '200': json('The assignment', 'Assignment'),
          ...common,
          ...notJson,
          '409': error('The task of this owner belongs to another of its sandboxes: it holds a VM or has a request waiting (details.reason task_conflict; task ids are per owner)'),
          '429': {
            ...error(
              "The owner has its group's max_waiting_per_owner requests waiting already (details.reason too_many_waiting, details.group, details.limit): refused at once, nothing enqueued",
            ),
            headers: { 'Retry-After': { description: 'seconds to wait before asking again', schema: { type: 'integer' } } },
          },
          '503': error('No VM became available in time (details.reason), the process is stopping (details.reason shutting_down), or it takes no change (details.reason data_format_too_new, data_format_unchecked)'),
        },
      },
    },
    '/acquire-set': {
      post: {
        operationId: 'acquireVmSet',
        summary: 'Wait up to timeoutMs for several VMs at once, all or nothing, and return one assignment per VM (in the order asked)',
        description:
          'An acquire-set job in the vm-acquire queue (job id set-<owner>+<requestId>) that waits in the acquire line as one request. Nothing is held while the set waits: it is taken in one step when every VM can be had. Each VM has its own lease (renew and release each, as after POST /acquire). GET and DELETE /requests/{id} show and withdraw it; a builder that goes away withdraws it.',
        security: builder,
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/AcquireSetRequest' } } } },
        responses: {
          '200': {
            description: 'Every VM of the set, in the order asked',
            content: { 'application/json': { schema: { type: 'object', required: ['vms'], properties: { vms: { type: 'array', items: { $ref: '#/components/schemas/Assignment' } } } } } },
          },
          ...common,
          ...notJson,
          '409': error('The requestId of this owner belongs to another of its sandboxes (details.reason task_conflict, details.taskId the requestId)'),
          '429': error("The acquire worker refused the set: its owner has max_waiting_per_owner requests waiting (details.reason too_many_waiting)"),
          '503': error('The whole set did not become available in time (details.reason), or the process is stopping (details.reason shutting_down, with Retry-After); nothing was taken'),
        },
      },
    },
    '/vms': {
      get: {
        operationId: 'listVms',
        summary: 'List VMs',
        security: read,
        parameters: [
          { name: 'group', in: 'query', schema: { type: 'string' }, description: 'group name or id' },
          { name: 'state', in: 'query', schema: { type: 'string', enum: [...ALL_VM_STATES] } },
          { name: 'owner', in: 'query', schema: { type: 'string' }, description: 'only VMs of this owner' },
          { name: 'cursor', in: 'query', schema: { type: 'string' }, description: 'the `next` of the previous page (VMs come in name order)' },
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 5000, default: 500 }, description: 'VMs per page' },
        ],
        responses: {
          '200': {
            description: 'One page of VMs, in name order',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  required: ['vms', 'next'],
                  properties: {
                    vms: { type: 'array', items: { $ref: '#/components/schemas/Vm' } },
                    next: { type: ['string', 'null'], description: 'cursor of the next page; null at the end' },
                  },
                },
              },
            },
          },
          ...common,
        },
      },
    },
    '/vms/{name}': {
      get: { operationId: 'getVm', summary: 'One VM', security: read, parameters: [nameParam], responses: { '200': json('The VM', 'Vm'), ...vmResponses } },
    },
    '/vms/{name}/release': {
      post: {
        operationId: 'releaseVm',
        summary: 'Release an in_use VM (it stays bound to its owner and sandbox)',
        security: builder,
        parameters: [nameParam],
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/ReleaseRequest' } } } },
        responses: { '200': json('Released', 'VmAction'), ...vmWriteResponses },
      },
    },
    '/vms/{name}/renew': {
      post: {
        operationId: 'renewLease',
        summary: 'Extend the lease of an assignment',
        security: builder,
        parameters: [nameParam],
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/LeaseRequest' } } } },
        responses: { '200': json('New lease expiry', 'Renewed'), ...vmWriteResponses },
      },
    },
    '/vms/{name}/terminate': {
      post: { operationId: 'terminateVm', summary: 'Request termination (reason operator)', security: admin, parameters: [nameParam], responses: { '202': json('Terminating', 'VmAction'), ...vmWriteResponses } },
    },
    '/vms/{name}/hold': {
      post: {
        operationId: 'holdVm',
        summary: 'Hold the VM out of acquisition',
        security: admin,
        parameters: [nameParam],
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/HoldRequest' } } } },
        responses: { '200': json('Held', 'VmAction'), ...vmWriteResponses },
      },
      delete: { operationId: 'unholdVm', summary: 'End the hold', security: admin, parameters: [nameParam], responses: { '200': json('Unheld', 'VmAction'), ...vmWriteResponses } },
    },
    '/autoholds': {
      get: {
        operationId: 'listAutoholds',
        summary: 'Autohold rules with a count left, by id',
        security: admin,
        responses: { '200': { description: 'The rules', content: { 'application/json': { schema: { type: 'object', properties: { rules: { type: 'array', items: { $ref: '#/components/schemas/AutoholdRule' } } } } } } }, ...common },
      },
      post: {
        operationId: 'addAutohold',
        summary: "Add an autohold rule: the VMs of the next `count` failed builds it matches are held instead of recycled",
        security: admin,
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/AutoholdRequest' } } } },
        responses: { '201': { description: 'Added', content: { 'application/json': { schema: { type: 'object', properties: { rule: { $ref: '#/components/schemas/AutoholdRule' } } } } } }, ...common },
      },
    },
    '/autoholds/{id}': {
      delete: {
        operationId: 'deleteAutohold',
        summary: 'Delete an autohold rule (VMs it holds stay held)',
        security: admin,
        parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } }],
        responses: { '200': { description: 'Deleted', content: { 'application/json': { schema: { type: 'object', properties: { deleted: { type: 'boolean' }, id: { type: 'integer' } } } } } }, ...common, '404': error('No such rule') },
      },
    },
    '/events': {
      get: {
        operationId: 'listEvents',
        summary: 'The audit trail: VM lifecycle events, oldest first, one page',
        security: read,
        parameters: [
          { name: 'since', in: 'query', schema: { type: 'string', pattern: '^(\\d{1,20}-\\d{1,20}|\\d{1,16})$' }, description: 'events after this event id (exclusive; as next gives), or at or after this time (epoch ms)' },
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: AUDIT_PAGE_MAX, default: 100 } },
          { name: 'vm', in: 'query', schema: { type: 'string' }, description: 'only this VM' },
          { name: 'owner', in: 'query', schema: { type: 'string' }, description: 'only this owner' },
        ],
        responses: { '200': json('One page of events', 'AuditPage'), ...common },
      },
    },
    '/requests/{id}': {
      get: {
        operationId: 'getAcquireRequest',
        summary: "An acquire request, of one VM or a set (by job id, task id or a set's requestId): queued, waiting (with why: reason, position per group), assigned or failed",
        security: readOrBuilder,
        parameters: [requestIdParam, requestOwnerParam],
        responses: {
          '200': json('The request', 'AcquireRequestStatus'),
          ...common,
          '404': error('No such request (or one of an owner this token may not act for)'),
          '409': error("The id names requests of several owners: give ?owner= (details.reason ambiguous_task); or a task's and a set's request of one owner: give the job id (details.reason ambiguous_request)"),
        },
      },
      delete: {
        operationId: 'cancelAcquireRequest',
        summary: 'Withdraw a waiting or queued acquire request (of one VM or a set); its job fails as cancelled',
        security: builder,
        parameters: [requestIdParam, requestOwnerParam],
        responses: {
          '202': json('Withdrawn', 'AcquireRequestStatus'),
          ...common,
          ...noChanges,
          '404': error('No such request (or one of an owner this token may not act for)'),
          '409': error('The request finished already, or the id names requests of several owners (details.reason ambiguous_task), or a task and a set of one owner (details.reason ambiguous_request)'),
        },
      },
    },
    '/groups': {
      get: {
        operationId: 'listGroups',
        summary: 'Groups: limits, counts per state, warm pool target, demand, spawns in flight',
        security: read,
        responses: { '200': { description: 'Groups', content: { 'application/json': { schema: { type: 'object', properties: { groups: { type: 'array', items: { $ref: '#/components/schemas/Group' } } } } } } }, ...common },
      },
    },
    '/groups/{group}/breaker': {
      delete: {
        operationId: 'resetBreaker',
        summary: "Close the group's spawn circuit breaker (after fixing what opened it)",
        security: admin,
        parameters: [groupParam],
        responses: {
          '200': { description: 'Closed', content: { 'application/json': { schema: { type: 'object', properties: { group: { $ref: '#/components/schemas/Group' } } } } } },
          ...common,
          ...notJson,
          ...noChanges,
        },
      },
    },
    '/groups/{group}/drain': {
      post: {
        operationId: 'drainGroup',
        summary: 'Drain a group at run time: spawn nothing (as max_vm_total: 0); its VMs are still served and retired by their timeouts',
        security: admin,
        parameters: [groupParam],
        responses: { '200': json('Drained', 'DrainResult'), ...common, ...notJson, ...noChanges, '404': error('No such group') },
      },
      delete: {
        operationId: 'undrainGroup',
        summary: 'End a run-time drain',
        security: admin,
        parameters: [groupParam],
        responses: { '200': json('Undrained', 'DrainResult'), ...common, ...notJson, ...noChanges, '404': error('No such group') },
      },
    },
    '/groups/{group}/rename': {
      post: {
        operationId: 'renameGroup',
        summary: 'Rename a group in place with its VMs, leases and waiting requests (as `vmpool group rename`); deploy the config with the new name next',
        security: admin,
        parameters: [groupParam],
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/RenameRequest' } } } },
        responses: {
          '200': { description: 'Renamed', content: { 'application/json': { schema: { type: 'object', properties: { from: { type: 'string' }, to: { type: 'string' }, vms: { type: 'integer' } } } } } },
          ...common,
          ...notJson,
          '404': error('No such group'),
        },
      },
    },
    '/openapi.json': {
      get: { operationId: 'getOpenApiDocument', summary: 'This document', security: read, responses: { '200': { description: 'OpenAPI document' }, ...common } },
    },
  },
} as const;
