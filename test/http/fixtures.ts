import type { Redis } from 'ioredis';
import { parseConfig, type Config, type ConfigInput } from '../../src/config/index.js';
import { startWebServer, type RunningWebServer } from '../../src/http/server.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes, type RunningProcess } from '../../src/runtime/boot.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import type { PoolKeys } from '../../src/pool/keys.js';

export const ADMIN_TOKEN = 'admin-token-0123456789abcdef';
export const BUILDER_TOKEN = 'builder-token-0123456789abcdef';
/** The API takes POST and DELETE only with this content type (also without a body). */
export const JSON_TYPE = { 'content-type': 'application/json' };

export function webTestConfig(extra: Partial<ConfigInput> = {}): ConfigInput {
  return {
    redis: { url: REDIS_URL },
    groups: [
      { name: 'base', archs: ['x86_64'], max_vm_per_user: 2, min_ready: 1, max_vm_total: 6 },
      { name: 'arm', archs: ['aarch64'], max_vm_per_user: 1, max_vm_total: 3 },
    ],
    ...extra,
  };
}

export interface WebKit {
  prefix: string;
  config: Config;
  redis: Redis;
  /** The pool's raw keys, for looking at the store on `redis`. */
  keys: PoolKeys;
  /** The test's own manager on the same pool (as another process would be). */
  vmm: VmManager;
  web: RunningWebServer;
  url: string;
  /** Adds a VM and brings it to ready through a passing health check. */
  addReady(name: string, ip: string, group?: string | number): Promise<void>;
  fetch(path: string, init?: RequestInit & { token?: string; json?: unknown }): Promise<Response>;
  /** Runs the real acquire worker in this process (for POST /acquire). */
  startAcquireWorker(): Promise<RunningProcess>;
  close(): Promise<void>;
}

const unusedFactory = () => {
  throw new Error('the acquire worker needs no provider');
};

export async function createWebKit(name: string, input: ConfigInput = webTestConfig(), options: { refreshMs?: number } = {}): Promise<WebKit> {
  const prefix = uniquePrefix(name);
  const config = parseConfig(input, {});
  const redis = connect();
  const vmm = new VmManager(config, { redis, prefix });
  await vmm.markServerStart();
  const web = await startWebServer(config, { prefix, port: 0, acquireGraceMs: 2_000, poolPageRefreshMs: options.refreshMs });
  const workers: RunningProcess[] = [];
  return {
    prefix,
    config,
    redis,
    keys: poolKeys(prefix),
    vmm,
    web,
    url: web.url,
    async addReady(vmName, ip, group = 0) {
      await vmm.addVmToPool(ip, vmName, group);
      await vmm.startVmCheck(vmName);
      await vmm.recordHealthCheckResult(vmName, true);
    },
    fetch(path, init = {}) {
      const headers = new Headers(init.headers);
      if (init.token) headers.set('authorization', `Bearer ${init.token}`);
      let body = init.body;
      if (init.json !== undefined) {
        headers.set('content-type', 'application/json');
        body = typeof init.json === 'string' ? init.json : JSON.stringify(init.json);
      }
      return fetch(new URL(path.replace(/^\//, ''), web.url), { ...init, headers, body });
    },
    async startAcquireWorker() {
      const running = await startProcessTypes(processTypeSpecs, ['acquire'], config, { prefix, providerFactory: unusedFactory, healthCheckFactory: unusedFactory });
      workers.push(running);
      return running;
    },
    async close() {
      for (const w of workers) await w.stop(5_000);
      await web.stop(2_000);
      await deleteKeysWithPrefix(redis, prefix);
      await vmm.close();
      await redis.quit();
    },
  };
}
