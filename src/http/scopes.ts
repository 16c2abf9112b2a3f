import type { WebScope } from '../config/index.js';

/**
 * Who may call each group of routes of the web process: the one table that docs/security.md shows
 * (generated) and that test/http/scopes.test.ts checks against the running routes. `none`: no token
 * needed; `any`: any valid token; otherwise the scopes that may (admin may call everything).
 */
export interface RouteGroupScope {
  group: string;
  /** `METHOD path`; `:param` is one path segment, a trailing `/*` any path below. */
  routes: readonly string[];
  scopes: 'none' | 'any' | readonly Exclude<WebScope, 'admin'>[];
  note?: string;
}

export const ROUTE_SCOPES: readonly RouteGroupScope[] = [
  { group: 'liveness', routes: ['GET /healthz'], scopes: 'none', note: 'no token needed' },
  { group: 'readiness', routes: ['GET /readyz'], scopes: 'any', note: 'any valid token' },
  { group: 'metrics', routes: ['GET /metrics'], scopes: ['read'], note: 'Prometheus text' },
  { group: 'pool page', routes: ['GET /'], scopes: ['read'], note: 'its hold, terminate and drain buttons call the admin routes below; a read token sees none' },
  { group: 'Bull Board, viewing', routes: ['GET /admin/queues/*'], scopes: ['read'], note: 'a read token gets the board in read-only mode, with no lease id in job results' },
  { group: 'Bull Board, changes', routes: ['POST /admin/queues/*', 'PUT /admin/queues/*', 'PATCH /admin/queues/*', 'DELETE /admin/queues/*'], scopes: [], note: 'none at all with `web.read_only_board: true`' },
  { group: 'API document', routes: ['GET /api/v1/openapi.json'], scopes: ['read'] },
  { group: 'VMs and groups', routes: ['GET /api/v1/vms', 'GET /api/v1/vms/:name', 'GET /api/v1/groups'], scopes: ['read'], note: 'never a lease id' },
  { group: 'audit trail', routes: ['GET /api/v1/events'], scopes: ['read'], note: 'lease ids only for admin' },
  { group: 'acquire', routes: ['POST /api/v1/acquire', 'POST /api/v1/acquire-set'], scopes: ['builder'], note: 'a builder token with `owners` only for those owners' },
  { group: 'leases', routes: ['POST /api/v1/vms/:name/renew', 'POST /api/v1/vms/:name/release'], scopes: ['builder'], note: 'with the lease id; only an admin may release without it' },
  { group: 'acquire requests, status', routes: ['GET /api/v1/requests/:id'], scopes: ['read', 'builder'], note: 'a token with `owners` sees only those owners\' requests' },
  { group: 'acquire requests, withdraw', routes: ['DELETE /api/v1/requests/:id'], scopes: ['builder'], note: 'a token with `owners` only those owners\' requests' },
  { group: 'VM operations', routes: ['POST /api/v1/vms/:name/terminate', 'POST /api/v1/vms/:name/hold', 'DELETE /api/v1/vms/:name/hold'], scopes: [] },
  { group: 'autohold rules', routes: ['GET /api/v1/autoholds', 'POST /api/v1/autoholds', 'DELETE /api/v1/autoholds/:id'], scopes: [] },
  { group: 'group operations', routes: ['POST /api/v1/groups/:group/drain', 'DELETE /api/v1/groups/:group/drain', 'DELETE /api/v1/groups/:group/breaker', 'POST /api/v1/groups/:group/rename'], scopes: [] },
];

/** Whether a token with only this scope may call the group's routes. */
export function scopeMay(entry: RouteGroupScope, scope: WebScope): boolean {
  if (entry.scopes === 'none' || entry.scopes === 'any' || scope === 'admin') return true;
  return (entry.scopes as readonly WebScope[]).includes(scope);
}

/** The Markdown table of ROUTE_SCOPES (docs/security.md). */
export function renderScopeTable(): string {
  const cell = (entry: RouteGroupScope, scope: WebScope) => (scopeMay(entry, scope) ? 'yes' : 'no');
  const lines = [
    '| route group | routes | `read` | `builder` | `admin` | notes |',
    '|---|---|---|---|---|---|',
    ...ROUTE_SCOPES.map((e) => {
      const routes = e.routes.map((r) => `\`${r}\``).join(', ');
      return `| ${e.group} | ${routes} | ${cell(e, 'read')} | ${cell(e, 'builder')} | ${cell(e, 'admin')} | ${e.note ?? ''} |`;
    }),
  ];
  return lines.join('\n');
}
