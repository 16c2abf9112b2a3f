--[[
  Ends a migration of the pool's data format (src/pool/dataFormat.ts): the pool is at its version
  (never lowered), and nothing is in progress.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the migration's version
    ARGV[2] now (epoch ms)
  Output:
    the pool's version after the call
]]
local base = KEYS[1]
local version, now = tonumber(ARGV[1]), ARGV[2]
--- @include "includes/poolKeys"

local key = dataFormatKey(base)
local found = tonumber(redis.call('HGET', key, 'version') or '1')
if found < version then
  redis.call('HSET', key, 'version', version, 'migrated_at', now)
  found = version
end
if tonumber(redis.call('HGET', key, 'migrating') or '0') <= found then
  redis.call('HDEL', key, 'migrating', 'migration', 'migration_started_at', 'progress')
end
return found
