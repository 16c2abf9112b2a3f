--[[
  Reclaims VMs whose lease lapsed (the builder stopped renewing), oldest expiry first, at most a
  batch per call. Each group's on_lease_expiry decides:
    terminate  the VM moves to terminating (its state is unknown; includes/startTermination); the
               caller enqueues the job;
    release    the build ends as in releaseVm (task fields cleared, builds counted, still bound to
               its owner and sandbox), but the VM goes to check_health, not ready: its state is
               unknown, so it is not handed out before a check passes. Its check is started here
               (includes/startCheck) and marked check_pending, so that the health job the caller
               enqueues takes it over (startVmCheck); the result makes the VM ready or
               check_health_failed.
  Entries of VMs no longer in_use are dropped from the leases set.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] batch size
    ARGV[3] number of groups N
    ARGV[4..] N pairs: group name, on_lease_expiry ('terminate' | 'release'; a group missing: terminate)
  Output:
    flat list {vm name, 'terminate' | 'release', ...} of the VMs acted on (empty: none was due)
]]
local base = KEYS[1]
local now, limit, groupCount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
--- @include "includes/releaseVm"
--- @include "includes/startCheck"
--- @include "includes/startTermination"
--- @include "includes/audit"

local policy = {}
for i = 0, groupCount - 1 do
  policy[ARGV[4 + i * 2]] = ARGV[5 + i * 2]
end

local out = {}
local names = redis.call('ZRANGEBYSCORE', leasesKey(base), '-inf', now, 'LIMIT', 0, limit)
for _, name in ipairs(names) do
  local key = vmKey(base, name)
  local vm = redis.call('HMGET', key, 'state', 'group', 'lease_expires_at')
  if vm[1] ~= 'in_use' or not vm[3] then
    redis.call('ZREM', leasesKey(base), name)
  elseif tonumber(vm[3]) <= now then
    recordEvent(base, 'lease_expired', name, {'action', policy[vm[2]] == 'release' and 'release' or 'terminate'})
    if policy[vm[2]] == 'release' then
      endBuild(base, name, now)
      setVmState(base, name, 'check_health')
      startCheck(base, name, now, 'check_health')
      redis.call('HSET', key, 'check_pending', 1)
      table.insert(out, name)
      table.insert(out, 'release')
    else
      startTermination(base, name, now, 'lease_expired')
      table.insert(out, name)
      table.insert(out, 'terminate')
    end
  else
    -- The score lags a renew that moved the expiry; put it right.
    redis.call('ZADD', leasesKey(base), vm[3], name)
  end
end
return out
