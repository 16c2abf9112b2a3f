--[[
  A VM that failed its check at hand-over (the group's check_on_acquire) is taken back from the
  assignment the acquire script just made and terminated, in one step: the build ends (its lease,
  task and owner counts go, includes/releaseVm endBuild), the job's assignment record goes (a re-run
  of the job does not collect it again), and the VM moves to terminating (the caller enqueues the
  terminate job; reconcile requests it again if that is lost). Audit: check_failed and
  terminate_requested, both with reason check_on_acquire.
  Only the assignment that was checked is undone: the VM must be in_use under the lease checked.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] lease id of the assignment that was checked
    ARGV[3] now (epoch ms)
    ARGV[4] acquire job id ('' when the caller is no job)
    ARGV[5] what the check said (one line, for the audit trail)
  Output:
    OK           the VM is terminating, its lease released
    WRONG_STATE  the VM is not in_use under that lease (nothing changed)
    NOT_FOUND    no such VM
]]
local base = KEYS[1]
local name, leaseId, now, jobId, detail = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--- @include "includes/replyCodes"
--- @include "includes/releaseVm"
--- @include "includes/startTermination"

local vm = redis.call('HMGET', vmKey(base, name), 'state', 'lease_id')
if not vm[1] then
  return NOT_FOUND
end
if vm[1] ~= 'in_use' or vm[2] ~= leaseId then
  return WRONG_STATE
end
if jobId ~= '' then
  redis.call('DEL', acquireAssignmentKey(base, jobId))
  redis.call('ZREM', acquireAssignedKey(base), jobId)
end
recordEvent(base, 'check_failed', name, {'reason', 'check_on_acquire', 'detail', detail})
endBuild(base, name, now)
startTermination(base, name, now, 'check_on_acquire')
return OK
