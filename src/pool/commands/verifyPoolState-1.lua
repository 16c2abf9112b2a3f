--[[
  Accepts the pool's state as current on this Redis run, after a restart that provably lost no
  write (src/runtime/poolStateWatch.ts decides). Only while the marker is still what the caller
  saw, so that two processes verifying at once act once. Acquires may then hand out VMs again
  (includes/poolState): each group's ready channel is told, so that waiting requests retry at once.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] generation the caller saw
    ARGV[2] epoch the caller saw
    ARGV[3..] the names of the groups whose ready channels are told
  Output:
    {OK, generation, epoch}  verified on this run; the epoch was bumped (the new one is returned)
    {POOL_CHANGED}           the marker is no longer what the caller saw (nothing changed)
]]
local base = KEYS[1]
local seenGeneration, seenEpoch = ARGV[1], ARGV[2]
--- @include "includes/replyCodes"
--- @include "includes/poolState"

local key = poolStateKey(base)
local marker = redis.call('HMGET', key, 'generation', 'epoch')
if marker[1] ~= seenGeneration or marker[2] ~= seenEpoch then
  return {POOL_CHANGED}
end
local run = currentRunId()
if run then
  redis.call('HSET', key, 'run_id', run)
end
local epoch = redis.call('HINCRBY', key, 'epoch', 1)
for i = 3, #ARGV do
  redis.call('PUBLISH', readyChannel(base, ARGV[i]), '')
end
return {OK, marker[1], tostring(epoch)}
