--[[
  A process's periodic check of the pool's state marker (src/runtime/poolStateWatch.ts): is this
  still the state it saw, on the same Redis run? The marker holds a generation (a random id, new
  after each recovery), an epoch that every check bumps (so a Redis that went back in time shows a
  lower one) and the run id of the Redis server the state was verified on.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] generation the caller knows ('' for none: a process that just started)
    ARGV[2] highest epoch the caller saw (0 for none)
    ARGV[3] generation of a new marker (used only when there is none and the caller knew none)
    ARGV[4] now (epoch ms)
  Output:
    {OK, generation, epoch}              same run, and the caller's generation (or it knew none):
                                         the epoch was bumped (the new one is returned)
    {CREATED, generation, epoch}         no marker and the caller knew none: one was created on
                                         this run (the new generation, epoch 1)
    {POOL_LOST}                          no marker though the caller knew one: Redis lost its data
                                         (nothing changed)
    {POOL_RESTARTED, generation, epoch}  the marker was verified on another Redis run (a restart,
                                         a failover): not proven current (nothing changed)
    {POOL_CHANGED, generation, epoch}    same run, another generation: another process recovered
                                         (nothing changed; the caller adopts it)
    {POOL_REGRESSED, generation, epoch}  same run and generation, but an epoch below the caller's
                                         (nothing changed)
]]
local base = KEYS[1]
local known, knownEpoch, newGeneration, now = ARGV[1], tonumber(ARGV[2]) or 0, ARGV[3], ARGV[4]
--- @include "includes/replyCodes"
--- @include "includes/poolState"

local key = poolStateKey(base)
local marker = redis.call('HMGET', key, 'generation', 'epoch', 'run_id')
local generation, epoch, verifiedOn = marker[1], marker[2], marker[3]
local run = currentRunId()

if not generation then
  if known ~= '' then
    return {POOL_LOST}
  end
  redis.call('HSET', key, 'generation', newGeneration, 'epoch', 1, 'created_at', now)
  if run then
    redis.call('HSET', key, 'run_id', run)
  end
  return {CREATED, newGeneration, '1'}
end
if verifiedOn and run and verifiedOn ~= run then
  return {POOL_RESTARTED, generation, epoch}
end
if known ~= '' and generation ~= known then
  return {POOL_CHANGED, generation, epoch}
end
if (tonumber(epoch) or 0) < knownEpoch then
  return {POOL_REGRESSED, generation, epoch}
end
if run and not verifiedOn then
  redis.call('HSET', key, 'run_id', run)
end
return {OK, generation, tostring(redis.call('HINCRBY', key, 'epoch', 1))}
