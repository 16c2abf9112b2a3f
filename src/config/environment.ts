import { redactUrl } from '../text/redact.js';
import { clusterPrefixProblem, parseRedisEndpoint } from '../redisEndpoint.js';
import type { ConfigIssue } from './parse.js';
import type { Config } from './schemas.js';

/**
 * Applies the environment's overrides to a parsed config, in place: REDIS_URL replaces `redis.url`
 * (and the file's redis.cluster or redis.sentinel). Returns what is then wrong with where Redis is,
 * checking VMPOOL_PREFIX, when set, instead of redis.prefix (it is the prefix the processes use).
 */
export function applyEnvironment(config: Config, env: NodeJS.ProcessEnv): ConfigIssue[] {
  if (env.REDIS_URL) {
    // REDIS_URL says where Redis is: the file's cluster or sentinel no longer apply.
    config.redis.url = env.REDIS_URL;
    delete config.redis.cluster;
    delete config.redis.sentinel;
  }
  const prefixOverride = env.VMPOOL_PREFIX || undefined;
  return redisIssues(config.redis, env.REDIS_URL ? 'REDIS_URL' : undefined, prefixOverride ? 'VMPOOL_PREFIX' : undefined, prefixOverride);
}

/**
 * What is wrong with where Redis is (a cluster or sentinel URL that does not parse, both cluster and
 * sentinel) and with the prefix there (untagged on a Cluster). `urlFrom` names the URL's source.
 */
export function redisIssues(redis: Config['redis'], urlFrom = 'redis.url', prefixFrom = 'redis.prefix', prefix = redis.prefix): ConfigIssue[] {
  const endpoint = parseRedisEndpoint(redis);
  if (typeof endpoint === 'string') {
    if (redis.cluster && redis.sentinel) return [{ path: 'redis', expected: endpoint, received: 'both' }];
    return [{ path: urlFrom, expected: endpoint, received: redactUrl(redis.url) }];
  }
  const problem = endpoint.kind === 'cluster' ? clusterPrefixProblem(prefix) : null;
  return problem ? [{ path: prefixFrom, expected: problem, received: prefix }] : [];
}
