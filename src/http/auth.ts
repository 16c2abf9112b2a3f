import { createHash, timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type { WebConfig, WebScope } from '../config/index.js';
import { HttpError, sendError } from './errors.js';
import { isLoopbackHost } from '../loopback.js';

export { isLoopbackHost };

export interface Principal {
  /** Who made the request: the token's name, or `anonymous` when the web process runs open. */
  name: string;
  scopes: readonly WebScope[];
  /** Owner patterns the token may acquire for; undefined: any owner. */
  owners?: readonly string[];
}

interface TokenEntry {
  digest: Buffer;
  principal: Principal;
}

const digest = (token: string) => createHash('sha256').update(token).digest();


export function configuredTokens(web: WebConfig): TokenEntry[] {
  const out: TokenEntry[] = [];
  if (web.auth.token) out.push({ digest: digest(web.auth.token), principal: { name: 'admin', scopes: ['admin'] } });
  web.auth.tokens.forEach((t, i) =>
    out.push({ digest: digest(t.token), principal: { name: t.name ?? `token-${i}`, scopes: t.scopes, ...(t.owners ? { owners: t.owners } : {}) } }),
  );
  return out;
}

/** Thrown at start when the web process would run without a token where others can reach it. */
export class WebAuthRequired extends Error {
  /** not_loopback: web.host is not loopback; public_name: web.public_url or web.allowed_hosts is set. */
  readonly reason: 'not_loopback' | 'public_name';

  constructor(host: string, reason: 'not_loopback' | 'public_name' = 'not_loopback') {
    super(
      reason === 'not_loopback'
        ? `web.host is ${JSON.stringify(host)}, which is not loopback: set web.auth.token (or web.auth.tokens) in the config, ` + 'or bind to 127.0.0.1'
        : 'web.public_url or web.allowed_hosts is set, so the web process is reached by a public name (through a reverse proxy), ' +
            'and without a token every caller the proxy forwards would be an admin: set web.auth.token (or web.auth.tokens) in the config, ' +
            'or remove public_url and allowed_hosts to run open on loopback for this machine only',
    );
    this.name = 'WebAuthRequired';
    this.reason = reason;
  }
}

/**
 * The web process may run without a token only on loopback and with no public name: a reverse
 * proxy on this machine connects from loopback, so without a token it would make every caller it
 * forwards an admin.
 */
export function assertBindAllowed(web: WebConfig, host = web.host): void {
  if (configuredTokens(web).length > 0) return;
  if (!isLoopbackHost(host)) throw new WebAuthRequired(host);
  if (web.public_url !== undefined || web.allowed_hosts.length > 0) throw new WebAuthRequired(host, 'public_name');
}

/** Headers a reverse proxy adds: a request that carries one came through a proxy, not from this machine. */
export function proxyHeaders(req: Request): string[] {
  return Object.keys(req.headers).filter((h) => h === 'forwarded' || h.startsWith('x-forwarded-') || h === 'x-real-ip' || h === 'via');
}

/** Admin may do everything; read and builder are separate (a builder token reads nothing but its own requests). */
export function hasScope(principal: Principal, scope: WebScope): boolean {
  return principal.scopes.includes('admin') || principal.scopes.includes(scope);
}

/** An owner pattern: `*` matches any run of characters, everything else itself. */
export function ownerPatternMatches(pattern: string, owner: string): boolean {
  const re = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`, 's');
  return re.test(owner);
}

/** Whether the caller may acquire as this owner: admins and tokens without `owners` may act for anyone. */
export function mayActFor(principal: Principal, owner: string): boolean {
  if (principal.scopes.includes('admin') || principal.owners === undefined) return true;
  return principal.owners.some((p) => ownerPatternMatches(p, owner));
}

/** The host name of a Host header value (`name:port`, `[v6]:port`), lower case; null if malformed. */
export function hostHeaderName(value: string | undefined): string | null {
  if (value === undefined || value === '' || value.length > 255) return null;
  const v = value.trim().toLowerCase();
  const m = /^\[([0-9a-f:.]+)\](?::(\d{1,5}))?$/.exec(v) ?? /^([a-z0-9._-]+)(?::(\d{1,5}))?$/.exec(v);
  return m ? m[1]! : null;
}

/**
 * The host names a request may carry: loopback ones always, web.host when it is one address,
 * web.allowed_hosts (`*.domain` matches its subdomains) and the host of web.public_url.
 */
export function hostAllowed(web: WebConfig, host: string): boolean {
  if (isLoopbackHost(host)) return true;
  const bound = web.host.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === bound && bound !== '0.0.0.0' && bound !== '::') return true;
  if (web.public_url !== undefined && new URL(web.public_url).hostname.replace(/^\[|\]$/g, '').toLowerCase() === host) return true;
  return web.allowed_hosts.some((entry) => {
    const e = entry.toLowerCase().replace(/^\[|\]$/g, '');
    return e.startsWith('*.') ? host.endsWith(e.slice(1)) && host.length > e.length - 1 : e === host;
  });
}

/**
 * Refuses (421) a request whose Host header names no host of this process. A page on another site
 * that rebinds its own name to 127.0.0.1 sends its name as Host, so this stops DNS rebinding even
 * when the process runs open on loopback. /healthz stays open for probes that use any address.
 */
export function checkHost(web: WebConfig) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const raw = req.headers.host;
    const host = hostHeaderName(raw);
    if (host !== null && hostAllowed(web, host)) {
      next();
      return;
    }
    sendError(
      res,
      new HttpError('misdirected_request', `this server does not answer for host ${JSON.stringify(raw ?? '')}; add it to web.allowed_hosts or set web.public_url`, {
        host: raw ?? null,
      }),
    );
  };
}

/** The token of a request: `Authorization: Bearer <token>`, or Basic with the token as password (browsers). */
function requestToken(req: Request): string | null {
  const header = req.headers.authorization;
  if (!header) return null;
  const [scheme, value] = header.split(/\s+/, 2);
  if (!value) return null;
  if (scheme?.toLowerCase() === 'bearer') return value;
  if (scheme?.toLowerCase() === 'basic') {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    return colon === -1 ? null : decoded.slice(colon + 1);
  }
  return null;
}

declare module 'express-serve-static-core' {
  interface Request {
    principal?: Principal;
  }
}

/**
 * Resolves the caller. Without configured tokens a caller on this machine is admin (the process is
 * on loopback with no public name), and a request that came through a proxy gets 403; with tokens a
 * request without a valid one gets 401.
 */
export function authenticate(web: WebConfig) {
  const tokens = configuredTokens(web);
  return (req: Request, res: Response, next: NextFunction): void => {
    if (tokens.length === 0) {
      const forwarded = proxyHeaders(req);
      if (forwarded.length > 0) {
        sendError(
          res,
          new HttpError(
            'forbidden',
            'this web process runs without tokens, for callers on this machine only, and this request came through a proxy: set web.auth.token (or web.auth.tokens) in the config',
            { proxyHeaders: forwarded },
          ),
        );
        return;
      }
      req.principal = { name: 'anonymous', scopes: ['admin'] };
      next();
      return;
    }
    const token = requestToken(req);
    if (token !== null) {
      const d = digest(token);
      const match = tokens.find((t) => timingSafeEqual(t.digest, d));
      if (match) {
        req.principal = match.principal;
        next();
        return;
      }
    }
    // Basic lets a browser ask for the token (as password) for the pool page and Bull Board. One
    // challenge per header line: Chromium reads only the first challenge of a line.
    res.setHeader('WWW-Authenticate', ['Basic realm="vmpool"', 'Bearer realm="vmpool"']);
    sendError(res, new HttpError('unauthorized', token === null ? 'missing Authorization: Bearer token' : 'invalid token', {}));
  };
}

/** Lets the request through when its caller has one of the scopes (admin has them all); 403 otherwise. */
export function requireScope(...scopes: [WebScope, ...WebScope[]]) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const principal = req.principal;
    if (principal && scopes.some((scope) => hasScope(principal, scope))) {
      next();
      return;
    }
    const required = scopes.join(' or ');
    sendError(res, new HttpError('forbidden', `this needs a token with the ${required} scope`, { required, scopes: principal?.scopes ?? [] }));
  };
}
