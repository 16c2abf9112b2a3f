import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { groupIndexOf, type Config } from '../config/index.js';
import { formatZodError } from '../validation.js';
import { ALL_VM_STATES, isValidVmName, isVmState, type VmRecord } from '../pool/types.js';
import type { VmManager } from '../pool/vmManager.js';
import { groupSummaries, resolveGroup, UnknownGroup, withoutLease } from '../poolView.js';
import { acquireRequestSchema, acquireSetRequestSchema, type AcquireRequestData, type AcquireSetRequestData, type VmAssignment, type VmSetAssignment } from '../../queues/acquire.js';
import { hasScope, mayActFor, requireScope } from './auth.js';
import { HttpError } from './errors.js';
import { RequestGroupsError, requestGroupIds } from '../acquire/requestGroups.js';
import { openApiDocument } from './openapi.js';
import { acquireSetBodySchema, autoholdBodySchema, emptyBodySchema, holdBodySchema, leaseBodySchema, releaseBodySchema, renameBodySchema } from './schemas.js';
import { AUDIT_PAGE_MAX, isAuditCursor } from '../pool/audit.js';
import { AmbiguousRequestId, AmbiguousTaskId, acquireRequestStatus, cancelAcquireRequest, type AcquireRequestStatus, type RequestLookup } from '../acquire/requests.js';

/**
 * The wait of a POST /acquire that names no timeoutMs: under the 60 s after which common proxies
 * (nginx's proxy_read_timeout, AWS ALB's idle timeout) and many HTTP clients give up, so that the
 * builder gets the 503 with its reason rather than a dropped connection.
 */
export const DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS = 55_000;

/** Seconds a POST /acquire answered by a stopping web process asks the builder to wait (Retry-After). */
export const SHUTDOWN_RETRY_AFTER_SECONDS = 5;

/** The web process is stopping: a waiting or new POST /acquire gets 503 with Retry-After at once. */
export class WebShuttingDown extends Error {
  constructor() {
    super('the web process is shutting down; the request was withdrawn, retry (another replica may answer)');
    this.name = 'WebShuttingDown';
  }
}

/**
 * How the API gets a VM for a builder: VmPoolClient.acquire in the web process. Aborting `signal`
 * (the HTTP client went away) withdraws the request and releases a VM assigned meanwhile.
 */
export type AcquireFn = (request: AcquireRequestData, options?: { signal?: AbortSignal }) => Promise<VmAssignment>;

/**
 * How the API gets several VMs at once: VmPoolClient.acquireSet in the web process (an acquire-set
 * job that waits in the acquire line as one request). Aborting `signal` withdraws the request and
 * releases VMs served meanwhile.
 */
export type AcquireSetFn = (request: AcquireSetRequestData, options?: { signal?: AbortSignal }) => Promise<VmSetAssignment>;

export interface ApiDeps {
  config: Config;
  vmm: VmManager;
  acquire: AcquireFn;
  acquireSet: AcquireSetFn;
}

/**
 * A VM as the API shows it: the descriptor (`group` is its group's name), the group's index in the
 * config (null once the group left the config), hold and lease expiry (never the lease id).
 */
export interface ApiVm extends Omit<VmRecord, 'leaseId' | 'boundSince' | 'checkSeq'> {
  /** The same as `group` (the group's name); kept because the API published it first. */
  groupName: string;
  groupIndex: number | null;
  boundSince: number | null;
}

export function apiVm(config: Config, vm: VmRecord): ApiVm {
  return { ...withoutLease(vm), groupName: vm.group, groupIndex: groupIndexOf(config.groups, vm.group) };
}

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body ?? {});
  if (!parsed.success) {
    throw new HttpError('validation_error', `invalid request body: ${formatZodError(parsed.error)}`, { issues: parsed.error.issues });
  }
  return parsed.data;
}

function vmNameParam(req: Request): string {
  const name = String(req.params.name ?? '');
  if (!isValidVmName(name)) throw new HttpError('validation_error', `invalid VM name ${JSON.stringify(name)}`, { vmName: name });
  return name;
}

/** GET /vms: VMs per page unless `limit` says, and at most. */
export const VMS_PAGE_DEFAULT = 500;
export const VMS_PAGE_MAX = 5000;

function queryString(req: Request, key: string): string | undefined {
  const v = req.query[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw new HttpError('validation_error', `query parameter ${key} must be one non-empty value`, { [key]: v });
  return v;
}

/** queryGroup, or the name of a group removed from the config that still drains (its VMs are listed by name). */
async function queryKnownGroup(vmm: VmManager, config: Config, value: string): Promise<string> {
  try {
    return queryGroup(config, value);
  } catch (err) {
    if ((await vmm.refreshRemovedGroups()).has(value)) return value;
    throw err;
  }
}

/** The name of a group given by name or by index (query parameter, acquire body), or a validation error. */
function queryGroup(config: Config, value: string): string {
  try {
    return resolveGroup(config, value);
  } catch (err) {
    if (err instanceof UnknownGroup) throw new HttpError('validation_error', err.message, { group: value });
    throw err;
  }
}

/**
 * POST and DELETE need `Content-Type: application/json`, even without a body. A browser sends that
 * type cross-site only after a CORS preflight, which this API never grants, so a page elsewhere
 * cannot drive the API with a form (CSRF) while the web process runs open on loopback.
 */
export function requireJsonContentType(req: Request, _res: Response, next: NextFunction): void {
  const header = req.headers['content-type'];
  const type = (header ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new HttpError('unsupported_media_type', `send Content-Type: application/json (got ${header ? JSON.stringify(header) : 'none'})`, {
      contentType: header ?? null,
    });
  }
  next();
}

/**
 * For routes whose client we do not control (Bull Board's UI sends some changes without a body or
 * content type): a browser marks a request from another site (Sec-Fetch-Site, Origin), and such a
 * request may not change anything.
 */
export function refuseCrossSiteChanges(req: Request, _res: Response, next: NextFunction): void {
  if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') return next();
  const fetchSite = req.headers['sec-fetch-site'];
  const origin = req.headers.origin;
  let crossSite = fetchSite !== undefined && fetchSite !== 'same-origin' && fetchSite !== 'none';
  if (!crossSite && origin !== undefined && origin !== 'null') {
    try {
      crossSite = new URL(origin).host !== req.headers.host;
    } catch {
      crossSite = true;
    }
  } else if (origin === 'null') {
    crossSite = true;
  }
  if (crossSite) {
    throw new HttpError('forbidden', 'changes from another site are refused', { origin: origin ?? null, secFetchSite: fetchSite ?? null });
  }
  next();
}

/** A 403 unless the request's token may act for `owner`. */
function requireOwner(req: Request, owner: string): void {
  if (!mayActFor(req.principal!, owner)) {
    throw new HttpError('forbidden', `this token may not acquire for owner ${JSON.stringify(owner)}`, {
      owner,
      owners: req.principal!.owners ?? [],
    });
  }
}

/** Aborted when the HTTP client goes away before the answer: a builder that leaves withdraws its request. */
function clientGone(res: Response): AbortSignal {
  const gone = new AbortController();
  res.on('close', () => {
    if (!res.writableEnded) gone.abort(new Error('the HTTP client went away'));
  });
  return gone.signal;
}

/** The 503 of a request cut short by the web process stopping: retry on another connection. */
function shuttingDownError(res: Response, err: WebShuttingDown): HttpError {
  res.setHeader('Retry-After', String(SHUTDOWN_RETRY_AFTER_SECONDS));
  // This connection's server is going away: the builder should retry on a new one.
  res.setHeader('Connection', 'close');
  return new HttpError('no_vm_available', err.message, { reason: 'shutting_down' });
}

export function apiRouter(deps: ApiDeps): Router {
  const { config, vmm } = deps;
  const router = express.Router();
  router.use(express.json({ limit: '64kb' }));

  router.post('/acquire', requireScope('builder'), requireJsonContentType, async (req, res) => {
    const parsed = acquireRequestSchema.safeParse(withGroupIds(config, req.body ?? {}));
    if (!parsed.success) {
      throw new HttpError('validation_error', `invalid acquire request: ${formatZodError(parsed.error)}`, { issues: parsed.error.issues });
    }
    const request = parsed.data;
    requireOwner(req, request.owner);
    // The groups the acquire processor would resolve: an unknown group, arch or tag is a 400 here.
    try {
      requestGroupIds(config.groups, request);
    } catch (err) {
      if (!(err instanceof RequestGroupsError)) throw err;
      throw new HttpError('validation_error', err.message, { groups: request.groups ?? null, arch: request.arch ?? null, tags: request.tags ?? [] });
    }
    // A builder that goes away withdraws its request (or gives back the VM it was just given).
    const gone = clientGone(res);
    let assignment: VmAssignment;
    try {
      assignment = await deps.acquire({ ...request, timeoutMs: request.timeoutMs ?? DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS }, { signal: gone });
    } catch (err) {
      if (gone.aborted) return;
      if (!(err instanceof WebShuttingDown)) throw err;
      throw shuttingDownError(res, err);
    }
    // Assigned just as the builder went away: nobody will use or release this VM but us.
    if (gone.aborted) {
      await vmm.releaseVm(assignment.vmName, assignment.leaseId).catch(() => false);
      return;
    }
    res.json(assignment);
  });

  router.post('/acquire-set', requireScope('builder'), requireJsonContentType, async (req, res) => {
    const body = parseBody(acquireSetBodySchema, req.body);
    requireOwner(req, body.owner);
    // Group indexes become names (the job in Redis names its groups); an unknown group, arch or tag is a 400 here.
    const vms = body.vms.map((item, i) => {
      try {
        const named = item.groups === undefined ? item : { ...item, groups: item.groups.map((g) => queryGroup(config, String(g))) };
        requestGroupIds(config.groups, named);
        return named;
      } catch (err) {
        if (!(err instanceof RequestGroupsError || err instanceof HttpError)) throw err;
        throw new HttpError('validation_error', `vms[${i}]: ${err.message}`, { item: i, groups: item.groups ?? null, arch: item.arch ?? null, tags: item.tags ?? [] });
      }
    });
    const request = parseBody(acquireSetRequestSchema, { ...body, vms, timeoutMs: body.timeoutMs ?? DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS });
    // A builder that goes away withdraws its request (or gives back the VMs it was just given).
    const gone = clientGone(res);
    let set: VmSetAssignment;
    try {
      set = await deps.acquireSet(request, { signal: gone });
    } catch (err) {
      if (gone.aborted) return;
      if (!(err instanceof WebShuttingDown)) throw err;
      throw shuttingDownError(res, err);
    }
    // Served just as the builder went away: nobody will use or release these VMs but us.
    if (gone.aborted) {
      await Promise.all(set.vms.map((v) => vmm.releaseVm(v.vmName, v.leaseId).catch(() => false)));
      return;
    }
    res.json({ vms: set.vms.map(({ vmName, vmIp, group, leaseId, leaseExpiresAt }) => ({ vmName, vmIp, group, leaseId, leaseExpiresAt })) });
  });

  /**
   * The request of :id (a job id, or a task id of the owner in ?owner=, else of the one owner this
   * token may act for that has it), or 404. A builder sees only the owners it acts for: another
   * owner's request is a 404, as if it did not exist (never a 403 that names its owner).
   */
  function requestLookup(req: Request): { id: string; lookup: RequestLookup } {
    const id = String(req.params.id ?? '');
    if (id.length === 0 || id.length > 600) throw new HttpError('validation_error', 'a request id is a job id or task id of 1 to 600 characters', { id });
    const principal = req.principal!;
    // A token bound to named owners (no `*`): their job ids are read; a SCAN of the whole Redis is
    // only for tokens that may see any owner, or owners by pattern.
    const named = principal.owners?.every((p) => !p.includes('*')) && !hasScope(principal, 'admin') ? principal.owners : undefined;
    return { id, lookup: { owner: queryString(req, 'owner'), owners: named, visible: (owner) => mayActFor(principal, owner) } };
  }

  async function requestOf(req: Request) {
    const { id, lookup } = requestLookup(req);
    let status: AcquireRequestStatus | null;
    try {
      status = await acquireRequestStatus(vmm, config, id, lookup);
    } catch (err) {
      if (err instanceof AmbiguousRequestId) throw new HttpError('conflict', err.message, { reason: 'ambiguous_request', id, owner: err.owner });
      if (!(err instanceof AmbiguousTaskId)) throw err;
      throw new HttpError('conflict', `${err.message} (?owner=)`, { reason: 'ambiguous_task', taskId: id });
    }
    if (!status) throw new HttpError('not_found', `no acquire request ${JSON.stringify(id)}`, { id });
    return { status, lookup };
  }

  router.get('/requests/:id', requireScope('builder', 'read'), async (req, res) => {
    res.json((await requestOf(req)).status);
  });

  router.delete('/requests/:id', requireScope('builder'), requireJsonContentType, async (req, res) => {
    const { status, lookup } = await requestOf(req);
    const outcome = await cancelAcquireRequest(vmm, config, status.id, `cancelled by ${req.principal!.name} through the API`, lookup);
    if (!outcome) throw new HttpError('not_found', `no acquire request ${JSON.stringify(status.id)}`, { id: status.id });
    if (!outcome.cancelled) {
      throw new HttpError('conflict', `acquire request ${status.id} is ${outcome.status.state} already`, { reason: 'finished', state: outcome.status.state });
    }
    res.status(202).json(outcome.status);
  });

  router.post('/vms/:name/release', requireScope('builder'), requireJsonContentType, async (req, res) => {
    const name = vmNameParam(req);
    const { leaseId, outcome } = parseBody(releaseBodySchema, req.body);
    // A builder releases its own assignment; only an admin may release without the lease.
    if (leaseId === undefined && !hasScope(req.principal!, 'admin')) {
      throw new HttpError('validation_error', 'leaseId is required (only an admin may release without it)', {});
    }
    const released = await vmm.releaseVm(name, leaseId, { outcome });
    if (!released) {
      const vm = await vmm.getVmRecord(name);
      throw new HttpError('conflict', `VM ${name} is ${vm.state}, not in_use`, { reason: 'not_in_use', state: vm.state });
    }
    res.json({ released: true, vm: apiVm(config, await vmm.getVmRecord(name)) });
  });

  router.post('/vms/:name/renew', requireScope('builder'), requireJsonContentType, async (req, res) => {
    const name = vmNameParam(req);
    const { leaseId } = parseBody(leaseBodySchema, req.body);
    const leaseExpiresAt = await vmm.renewLease(name, leaseId);
    res.json({ vmName: name, leaseId, leaseExpiresAt });
  });

  router.post('/vms/:name/terminate', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const name = vmNameParam(req);
    parseBody(emptyBodySchema, req.body);
    const acted = await vmm.startVmTermination(name, null, 'operator');
    if (!acted) throw new HttpError('conflict', `VM ${name} is already terminating`, { reason: 'already_terminating' });
    res.status(202).json({ terminating: true, vm: apiVm(config, await vmm.getVmRecord(name)) });
  });

  router.post('/vms/:name/hold', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const name = vmNameParam(req);
    const body = parseBody(holdBodySchema, req.body);
    const period = body.for !== undefined ? { forMs: body.for * 1000 } : { until: typeof body.until === 'string' ? Date.parse(body.until) : (body.until ?? null) };
    const held = await vmm.holdVm(name, body.by ?? req.principal!.name, { ...period, reason: body.reason ?? null });
    if (!held) {
      const vm = await vmm.getVmRecord(name);
      throw new HttpError('conflict', `VM ${name} is already held by ${vm.heldBy}`, { reason: 'already_held', heldBy: vm.heldBy });
    }
    res.json({ held: true, vm: apiVm(config, await vmm.getVmRecord(name)) });
  });

  router.delete('/vms/:name/hold', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const name = vmNameParam(req);
    const unheld = await vmm.unholdVm(name);
    if (!unheld) throw new HttpError('conflict', `VM ${name} is not held`, { reason: 'not_held' });
    res.json({ held: false, vm: apiVm(config, await vmm.getVmRecord(name)) });
  });

  router.get('/vms', requireScope('read'), async (req, res) => {
    const groupParam = queryString(req, 'group');
    const stateParam = queryString(req, 'state');
    const owner = queryString(req, 'owner');
    const group = groupParam === undefined ? undefined : await queryKnownGroup(vmm, config, groupParam);
    if (stateParam !== undefined && !isVmState(stateParam)) {
      throw new HttpError('validation_error', `unknown state ${JSON.stringify(stateParam)}; states: ${ALL_VM_STATES.join(', ')}`, { state: stateParam });
    }
    const cursor = queryString(req, 'cursor');
    const limitParam = queryString(req, 'limit');
    const limit = limitParam === undefined ? VMS_PAGE_DEFAULT : Number(limitParam);
    if (!/^\d+$/.test(limitParam ?? '1') || !Number.isInteger(limit) || limit < 1 || limit > VMS_PAGE_MAX) {
      throw new HttpError('validation_error', `limit must be a whole number from 1 to ${VMS_PAGE_MAX}, not ${JSON.stringify(limitParam)}`, { limit: limitParam });
    }
    if (cursor !== undefined && !isValidVmName(cursor)) throw new HttpError('validation_error', `invalid cursor ${JSON.stringify(cursor)} (the next of a previous page)`, { cursor });
    const page = await vmm.listVms({ group, state: stateParam, owner, cursor, limit });
    res.json({ vms: page.vms.map((v) => apiVm(config, v)), next: page.next });
  });

  router.get('/vms/:name', requireScope('read'), async (req, res) => {
    res.json(apiVm(config, await vmm.getVmRecord(vmNameParam(req))));
  });

  router.get('/events', requireScope('read'), async (req, res) => {
    const since = queryString(req, 'since');
    const limitParam = queryString(req, 'limit');
    const vm = queryString(req, 'vm');
    const owner = queryString(req, 'owner');
    for (const key of Object.keys(req.query)) {
      if (!['since', 'limit', 'vm', 'owner'].includes(key)) throw new HttpError('validation_error', `unknown query parameter ${key}; known: since, limit, vm, owner`, { [key]: req.query[key] });
    }
    if (since !== undefined && !isAuditCursor(since)) {
      throw new HttpError('validation_error', `since must be an event id (<ms>-<seq>, as next gives) or a time in epoch ms, not ${JSON.stringify(since)}`, { since });
    }
    const limit = limitParam === undefined ? 100 : Number(limitParam);
    if (!/^\d+$/.test(limitParam ?? '1') || !Number.isInteger(limit) || limit < 1 || limit > AUDIT_PAGE_MAX) {
      throw new HttpError('validation_error', `limit must be a whole number from 1 to ${AUDIT_PAGE_MAX}, not ${JSON.stringify(limitParam)}`, { limit: limitParam });
    }
    if (vm !== undefined && !isValidVmName(vm)) throw new HttpError('validation_error', `invalid VM name ${JSON.stringify(vm)}`, { vm });
    const page = await vmm.reader.auditEvents({ since, limit, vm, owner });
    // A lease id is the capability to renew and release: only an admin sees it in the trail.
    res.json(hasScope(req.principal!, 'admin') ? page : { ...page, events: page.events.map((e) => ({ ...e, lease: null })) });
  });

  router.get('/autoholds', requireScope('admin'), async (_req, res) => {
    res.json({ rules: await vmm.autoholds.list() });
  });

  router.post('/autoholds', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const rule = await vmm.autoholds.add(parseBody(autoholdBodySchema, req.body), req.principal!.name);
    res.status(201).json({ rule });
  });

  router.delete('/autoholds/:id', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const raw = String(req.params.id);
    if (!/^[1-9][0-9]{0,15}$/.test(raw)) throw new HttpError('validation_error', `an autohold rule id is a positive integer, not ${JSON.stringify(raw)}`, { id: raw });
    if (!(await vmm.autoholds.delete(Number(raw)))) throw new HttpError('not_found', `no autohold rule ${raw}`, { id: raw });
    res.json({ deleted: true, id: Number(raw) });
  });

  router.get('/groups', requireScope('read'), async (_req, res) => {
    res.json({ groups: await groupSummaries(vmm) });
  });

  router.delete('/groups/:group/breaker', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const group = queryGroup(config, String(req.params.group));
    await vmm.resetBreaker(group);
    res.json({ group: (await groupSummaries(vmm)).find((g) => g.name === group) });
  });
  /** Drain (POST) or undrain (DELETE) a group at run time, as `vmpool drain` and `vmpool undrain`. */
  const drainRoute = (drain: boolean) => async (req: Request, res: Response) => {
    const value = String(req.params.group);
    let group: string;
    try {
      group = resolveGroup(config, value);
    } catch (err) {
      if (err instanceof UnknownGroup) throw new HttpError('not_found', err.message, { group: value });
      throw err;
    }
    parseBody(emptyBodySchema, req.body ?? {});
    const changed = drain ? await vmm.drainGroup(group) : await vmm.undrainGroup(group);
    const summary = (await groupSummaries(vmm)).find((g) => g.name === group)!;
    res.json({ drained: drain, changed, group: summary });
  };
  router.post('/groups/:group/rename', requireScope('admin'), requireJsonContentType, async (req, res) => {
    const value = String(req.params.group);
    let from: string;
    try {
      from = await queryKnownGroup(vmm, config, value);
    } catch (err) {
      if (err instanceof HttpError) throw new HttpError('not_found', err.message, { group: value });
      throw err;
    }
    const { to } = parseBody(renameBodySchema, req.body);
    res.json(await vmm.renameGroup(from, to));
  });
  router.post('/groups/:group/drain', requireScope('admin'), requireJsonContentType, drainRoute(true));
  router.delete('/groups/:group/drain', requireScope('admin'), requireJsonContentType, drainRoute(false));

  router.use((req) => {
    const allowed = apiRouteMethods(req.path);
    if (allowed) throw new HttpError('method_not_allowed', `${req.method} is not allowed here; use ${allowed.join(', ')}`, { allow: allowed });
    throw new HttpError('not_found', 'no such API route', {});
  });
  return router;
}

/** Groups in an acquire body (names or indexes) become names, as the job payload carries them; unknown ones are a 400. */
function withGroupIds(config: Config, body: unknown): unknown {
  if (body === null || typeof body !== 'object' || !Array.isArray((body as { groups?: unknown }).groups)) return body;
  // Resolved here, so that the job in Redis names its groups (an index is this process's alias).
  const groups = (body as { groups: unknown[] }).groups.map((g) => (typeof g === 'string' || (typeof g === 'number' && Number.isInteger(g)) ? queryGroup(config, String(g)) : g));
  return { ...body, groups };
}

const apiRoutes = Object.entries(openApiDocument.paths).map(([template, ops]) => ({
  pattern: new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}/?$`),
  methods: Object.keys(ops).map((m) => m.toUpperCase()),
}));

/** The methods an API path takes (from the OpenAPI document), or null when no route matches it. */
export function apiRouteMethods(path: string): string[] | null {
  const route = apiRoutes.find((r) => r.pattern.test(path));
  if (!route) return null;
  return route.methods.includes('GET') ? [...route.methods, 'HEAD'] : route.methods;
}
