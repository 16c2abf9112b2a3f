--[[
  Moves a VM to `terminating` and records terminating_since, which names its terminate request
  (terminateJobId) and tells reconcile when to request it again (vm_terminating_timeout). Shared by
  startVmTermination, recordHealthCheckResult and expireLeases; the caller enqueues the terminate job.
  Records terminate_requested with its reason in the audit trail (with the lease it ends, if any).
]]
--- @include "includes/setVmState"
--- @include "includes/audit"

local function startTermination(base, name, now, reason)
  recordEvent(base, 'terminate_requested', name, {'reason', reason})
  setVmState(base, name, 'terminating')
  redis.call('HSET', vmKey(base, name), 'terminating_since', now)
  indexDue(base, name)
end
