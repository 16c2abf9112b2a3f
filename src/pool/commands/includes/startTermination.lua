--[[
  Moves a VM to `terminating` and records terminating_since, which names its terminate request
  (terminateJobId) and tells reconcile when to request it again (vm_terminating_timeout). Shared by
  startVmTermination, recordHealthCheckResult and expireLeases; the caller enqueues the terminate job.
]]
--- @include "includes/setVmState"

local function startTermination(base, name, now)
  setVmState(base, name, 'terminating')
  redis.call('HSET', vmKey(base, name), 'terminating_since', now)
end
