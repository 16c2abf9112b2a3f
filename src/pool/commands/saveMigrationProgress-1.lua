--[[
  Records where a migration of the pool's data format got to (src/pool/dataFormat.ts), with the
  migration's writes of that step, only while the caller still holds the migration lock and the
  migration is still the one in progress: a process that lost the lock (it paused past the lock's
  expiry, and another process took over) writes nothing.

  The writes are commands given in ARGV (each: its number of words, then the words, command name
  first). Each key they name is one of the pool's (the migration builds them from the pool's keys,
  src/pool/keys.ts), so they live in the slot of KEYS[1]. A write that fails stops the script: the
  writes before it stay (as in a MULTI) and the progress is not recorded, so the step runs again
  (each step is idempotent).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the migration lock's token (src/pool/locks.ts)
    ARGV[2] the migration's version
    ARGV[3] the progress to record
    ARGV[4..] the writes: n, command, arg1 .. argN-1, then the next command's n, ...
  Output:
    OK                 the writes applied and the progress recorded
    LOCK_NOT_HELD      the lock is not held with this token: nothing written
    DATA_FORMAT_AHEAD  this migration is no longer in progress (another process finished it): nothing written
]]
local base = KEYS[1]
local token, version, progress = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

if redis.call('GET', migrationLockKey(base)) ~= token then
  return LOCK_NOT_HELD
end
local key = dataFormatKey(base)
if redis.call('HGET', key, 'migrating') ~= version then
  return DATA_FORMAT_AHEAD
end
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
redis.call('HSET', key, 'progress', progress)
return OK
