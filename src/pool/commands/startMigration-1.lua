--[[
  Marks a migration of the pool's data format as in progress (src/pool/dataFormat.ts), under the
  migration lock. A migration that was already in progress (its process died) keeps its progress,
  so the next process resumes it; another one starts from none.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the migration's version (the data format it leads to)
    ARGV[2] the migration's name
    ARGV[3] now (epoch ms)
  Output:
    {OK, progress}        started or resumed; progress is '' when none was recorded
    {DATA_FORMAT_AHEAD}   the pool is already at that version or past it (nothing changed)
]]
local base = KEYS[1]
local version, name, now = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local key = dataFormatKey(base)
local found = redis.call('HMGET', key, 'version', 'migrating', 'progress')
if tonumber(found[1] or '1') >= tonumber(version) then
  return {DATA_FORMAT_AHEAD}
end
if found[2] == version then
  return {OK, found[3] or ''}
end
redis.call('HSET', key, 'migrating', version, 'migration', name, 'migration_started_at', now)
redis.call('HDEL', key, 'progress')
return {OK, ''}
