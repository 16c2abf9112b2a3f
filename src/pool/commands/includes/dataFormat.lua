--[[
  Whether the pool's data format is ahead of the caller's (src/pool/dataFormat.ts, newerThan): its
  recorded version, or the target of a migration in progress, is past the version the caller knows.
  A script that writes the pool's data for a process that no heartbeat stops when the format moves
  on (a builder's VmPoolClient) checks this first, so that an older release never writes its
  layout into data that a newer one migrated, or is migrating. A pool without a recorded version
  is not ahead (it is version 1, or fresh).
]]
--- @include "includes/poolKeys"

-- The version the caller would need (the higher of `version` and `migrating`) when it is past
-- `known`, else nil.
local function dataFormatAhead(base, known)
  local knownVersion = tonumber(known)
  if not knownVersion then
    error('the caller\'s data-format version is missing')
  end
  local found = redis.call('HMGET', dataFormatKey(base), 'version', 'migrating')
  local needed = math.max(tonumber(found[1]) or 0, tonumber(found[2]) or 0)
  if needed > knownVersion then
    return needed
  end
  return nil
end
