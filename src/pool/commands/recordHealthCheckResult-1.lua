--[[
  Applies the result of a health check.
    ok:     from check_health or in_use, check_fails = 0; check_health becomes ready. The first
            pass of a spawned VM (it has spawn_started_at) adds now - spawn_started_at to the
            group's boot time (bootTime: an exponential moving average, weight 0.2).
    failed: from check_health, in_use or check_health_failed, check_fails += 1; check_health becomes
            check_health_failed. Once check_fails > max fails, the VM moves to terminating in this
            same script (includes/startTermination; the caller enqueues the terminate job).
  A result for a VM in any other state changes nothing.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] '1' for ok, '0' for failed
    ARGV[3] now (epoch ms)
    ARGV[4..] pairs: group name, its vm_max_check_fails (the VM's group picks its own; 0 for a
              group no longer configured)
  Output:
    {OK, HGETALL of the VM}            the passed check was recorded
    {CHECK_FAILED, HGETALL of the VM}  the failed check was counted
    {TERMINATING, HGETALL of the VM}   the failed check was one too many: the VM is terminating
    {WRONG_STATE, HGETALL of the VM}   the VM's state takes no result (nothing changed)
    {NOT_FOUND}                        no such VM
]]
local base = KEYS[1]
local name, ok, now = ARGV[1], ARGV[2] == '1', ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/startTermination"

-- Folds one spawn-to-ready sample (ms) into the group's moving average.
local function recordBootTime(base, group, sampleMs)
  if sampleMs < 0 then
    return
  end
  local k = bootTimeKey(base, group)
  local ema = tonumber(redis.call('HGET', k, 'ema_ms'))
  if ema then
    ema = ema + 0.2 * (sampleMs - ema)
  else
    ema = sampleMs
  end
  redis.call('HSET', k, 'ema_ms', tostring(math.floor(ema + 0.5)))
  redis.call('HINCRBY', k, 'samples', 1)
end

local key = vmKey(base, name)
local state = redis.call('HGET', key, 'state')
if not state then
  return {NOT_FOUND}
end
local vmGroup = redis.call('HGET', key, 'group')
local maxFails = 0
for i = 4, #ARGV - 1, 2 do
  if ARGV[i] == vmGroup then
    maxFails = tonumber(ARGV[i + 1]) or 0
  end
end
if ok then
  if state ~= 'check_health' and state ~= 'in_use' then
    return {WRONG_STATE, redis.call('HGETALL', key)}
  end
  redis.call('HSET', key, 'check_fails', 0)
  if state == 'check_health' then
    setVmState(base, name, 'ready')
    recordEvent(base, 'ready', name)
    local spawnStartedAt = tonumber(redis.call('HGET', key, 'spawn_started_at'))
    if spawnStartedAt then
      redis.call('HDEL', key, 'spawn_started_at')
      recordBootTime(base, redis.call('HGET', key, 'group'), tonumber(now) - spawnStartedAt)
    end
  end
  return {OK, redis.call('HGETALL', key)}
end
if state ~= 'check_health' and state ~= 'in_use' and state ~= 'check_health_failed' then
  return {WRONG_STATE, redis.call('HGETALL', key)}
end
local fails = redis.call('HINCRBY', key, 'check_fails', 1)
recordEvent(base, 'check_failed', name, {'check_fails', fails})
if state == 'check_health' then
  setVmState(base, name, 'check_health_failed')
end
if fails > maxFails then
  startTermination(base, name, now, 'health_check_failed')
  return {TERMINATING, redis.call('HGETALL', key)}
end
return {CHECK_FAILED, redis.call('HGETALL', key)}
