--[[
  Reads the pool's data-format version (src/pool/dataFormat.ts), and stamps a pool that has none:
  a fresh pool (no state marker, no VM) with the caller's version, an existing one with version 1
  (the layout before versions were recorded).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the caller's data-format version (stamped on a fresh pool)
    ARGV[2] now (epoch ms)
  Output:
    {version, migrating, migration, stamped}  version and the migration in progress (its target
      version, '' when none, and its name); stamped is 1 when this call wrote the version
]]
local base = KEYS[1]
local current, now = ARGV[1], ARGV[2]
--- @include "includes/poolKeys"

local key = dataFormatKey(base)
local found = redis.call('HMGET', key, 'version', 'migrating', 'migration')
if found[1] then
  return {found[1], found[2] or '', found[3] or '', 0}
end
local version = current
if redis.call('EXISTS', poolStateKey(base)) == 1 or redis.call('SCARD', allVmsKey(base)) > 0 then
  version = '1'
end
redis.call('HSET', key, 'version', version, 'stamped_at', now)
return {version, '', '', 1}
