--[[
  Recovers the pool after Redis lost or rolled back its state (src/runtime/poolStateWatch.ts
  decides): no VM record can be proven current, so none is handed out again.
    - every VM not already terminating moves to terminating (includes/startTermination), the
      caller enqueues their terminate jobs: a VM that a builder held is never handed to another;
    - the server start is marked again (includes/serverStart): without it acquire serves nothing;
    - a new marker: a new generation, an epoch above any the caller saw, this Redis run, the time
      of the recovery and sweep_generation, which has reconcile terminate the provider's machines
      that the pool does not know (VmMaster.sweepAfterLoss);
    - each group's ready channel is told, so that waiting requests retry at once.
  Only while the marker is still what the caller saw, so that two processes recovering at once
  recover once. Runs once per loss over every VM record: O(VMs), never on a periodic path.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] generation the caller saw in the marker ('' when there was none)
    ARGV[2] epoch the caller saw in the marker ('' when there was none)
    ARGV[3] new generation
    ARGV[4] new epoch
    ARGV[5] now (epoch ms)
    ARGV[6..] the names of the groups whose ready channels are told
  Output:
    {OK, names}     recovered; names: the VMs moved to terminating (a list)
    {POOL_CHANGED}  the marker is no longer what the caller saw (nothing changed)
]]
local base = KEYS[1]
local seenGeneration, seenEpoch, newGeneration, newEpoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = ARGV[5]
--- @include "includes/replyCodes"
--- @include "includes/poolState"
--- @include "includes/serverStart"
--- @include "includes/startTermination"

local key = poolStateKey(base)
local marker = redis.call('HMGET', key, 'generation', 'epoch')
if (marker[1] or '') ~= seenGeneration or (marker[2] or '') ~= seenEpoch then
  return {POOL_CHANGED}
end

local terminated = {}
for _, name in ipairs(redis.call('SMEMBERS', allVmsKey(base))) do
  local state = redis.call('HGET', vmKey(base, name), 'state')
  if state and state ~= 'terminating' then
    startTermination(base, name, now, 'state_lost')
    terminated[#terminated + 1] = name
  end
end
markServerStart(base, now)

redis.call('DEL', key)
redis.call('HSET', key, 'generation', newGeneration, 'epoch', newEpoch, 'recovered_at', now, 'sweep_generation', newGeneration, 'created_at', now)
local run = currentRunId()
if run then
  redis.call('HSET', key, 'run_id', run)
end
for i = 6, #ARGV do
  redis.call('PUBLISH', readyChannel(base, ARGV[i]), '')
end
return {OK, terminated}
