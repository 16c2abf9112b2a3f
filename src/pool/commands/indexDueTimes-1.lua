--[[
  Puts existing VMs into the due-time sets and the coming set (includes/setVmState: indexDue), for
  VMs recorded before those sets existed. Idempotent; reconcile runs it over every VM name once per
  process start (VmManager.backfillDueTimes), in batches. A name with no record is skipped.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV    VM names
  Output:
    the number of VMs indexed
]]
local base = KEYS[1]
--- @include "includes/setVmState"

local n = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', vmKey(base, ARGV[i])) == 1 then
    indexDue(base, ARGV[i])
    n = n + 1
  end
end
return n
