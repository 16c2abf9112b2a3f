--[[
  Takes an in_use VM back from its build (shared by releaseVm, cancelAcquire, acquireVm and
  expireLeases). The caller has checked that the VM is in_use.
  endBuild records last_release, counts the build and clears the task fields; it returns the VM's
  check_fails. releaseInUseVm records the `released` event (with the build's task and lease, and
  `reason` when given: 'withdrawn' when the request that got the VM was withdrawn; and the
  build's `outcome` when the builder said it), then makes the
  VM ready again, still bound to its owner and sandbox (dirty), or check_health_failed if a check
  failed during the build. Leaving in_use ends the lease (setVmState). expireLeases uses endBuild
  alone: its lease_expired event says what happened.
]]
--- @include "includes/setVmState"
--- @include "includes/audit"
--- @include "includes/taskOwner"

local function endBuild(base, name, now)
  local key = vmKey(base, name)
  local vm = redis.call('HMGET', key, 'check_fails', 'task_id', 'owner')
  forgetTaskVm(base, name, vm[3], vm[2])
  redis.call('HDEL', key, 'used_by_worker', 'task_id', 'build_id', 'chroot', 'in_use_since')
  redis.call('HSET', key, 'last_release', now)
  redis.call('HINCRBY', key, 'builds_count', 1)
  return tonumber(vm[1]) or 0
end

local function releaseInUseVm(base, name, now, reason, outcome)
  recordEvent(base, 'released', name, {'reason', reason, 'outcome', outcome})
  if endBuild(base, name, now) > 0 then
    setVmState(base, name, 'check_health_failed')
  else
    setVmState(base, name, 'ready')
  end
end
