--[[
  The pool's state marker (poolStateKey): which Redis run its state was verified on. After a Redis
  restart or failover the run id changes, and until a process has verified the state (or recovered
  from its loss; src/runtime/poolStateWatch.ts), no VM is handed out: the records may be older than
  what builders hold.
]]
--- @include "includes/poolKeys"

-- The run id of this Redis server (INFO server), or nil where INFO is not allowed. Read once per
-- script call (INFO is the dearest step of a pick, and a dispatch picks many times); it cannot
-- change while a script runs.
local runIdOfThisCall = nil
local function currentRunId()
  if runIdOfThisCall == nil then
    local info = redis.pcall('INFO', 'server')
    runIdOfThisCall = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or false
  end
  return runIdOfThisCall or nil
end

-- Whether the marker was verified on this Redis run. A pool without a marker (one that no worker
-- process ran on yet) or a server without INFO is served as before.
local function poolVerified(base)
  local verifiedOn = redis.call('HGET', poolStateKey(base), 'run_id')
  if not verifiedOn then
    return true
  end
  local run = currentRunId()
  return run == nil or run == verifiedOn
end
