--[[
  Takes a VM back from its build. Only `in_use` is released: the VM becomes `ready` again, still
  bound to its owner and sandbox (dirty), or `check_health_failed` if a check failed during the build.
  A failed build's VM that an autohold rule matches is then held for it (includes/autohold).
  Records last_release, counts the build, clears the task fields and ends the lease.
  With a lease id, only the holder of that lease may release (a builder whose lease lapsed and was
  given to someone else cannot release the new holder's VM).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] now (epoch ms)
    ARGV[3] lease id ('': no lease check)
    ARGV[4] the build's outcome: 'failed', 'success', or '' (not said)
    ARGV[5] the data-format version the caller knows (includes/dataFormat)
  Output:
    OK              released
    HELD            released, and held by an autohold rule (a failed build): {HELD, rule id}
    WRONG_STATE     the VM is not in_use (nothing changed)
    NOT_FOUND       no such VM
    LEASE_MISMATCH  the VM is in_use under another lease (nothing changed)
    {DATA_FORMAT_AHEAD, version needed}  the pool's data format is past the caller's (nothing changed)
]]
local base = KEYS[1]
local name, now, leaseId, outcome, knownFormat = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--- @include "includes/replyCodes"
--- @include "includes/releaseVm"
--- @include "includes/hold"
--- @include "includes/autohold"
--- @include "includes/dataFormat"

local needed = dataFormatAhead(base, knownFormat)
if needed then
  return { DATA_FORMAT_AHEAD, needed }
end

local vm = redis.call('HMGET', vmKey(base, name), 'state', 'lease_id')
if not vm[1] then
  return NOT_FOUND
end
if vm[1] ~= 'in_use' then
  return WRONG_STATE
end
if leaseId ~= '' and vm[2] ~= leaseId then
  return LEASE_MISMATCH
end
releaseInUseVm(base, name, now, nil, outcome)
if outcome == 'failed' then
  local rule = applyAutohold(base, name, now)
  if rule then
    return { HELD, rule }
  end
end
return OK
