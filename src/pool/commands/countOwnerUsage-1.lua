--[[
  Counts VMs bound to an owner before owners' usage across groups was counted (includes/ownerUsage):
  each VM of ARGV that has an owner and no owner_usage record is added to its owner's usage, by its
  group's spec from the caller's config (the default, 1 instance in scope 'all', for a group the
  caller does not know), and gets the record, so that its removal subtracts what was added here.
  Idempotent (a VM with a record is left alone); reconcile runs it over every VM name once per
  process start (VmManager.backfillOwnerUsage), in batches. A name with no record is skipped.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] JSON object: group name -> its owner usage spec (src/reconcile/quota.ts ownerUsageSpec)
    ARGV[2..] VM names
  Output:
    the number of VMs counted
]]
local base = KEYS[1]
local specs = cjson.decode(ARGV[1])
--- @include "includes/ownerUsage"

local n = 0
for i = 2, #ARGV do
  local key = vmKey(base, ARGV[i])
  local vm = redis.call('HMGET', key, 'owner', 'owner_usage', 'group')
  if vm[1] and not vm[2] then
    local spec = vm[3] and specs[vm[3]]
    redis.call('HSET', key, 'owner_usage', countOwnerBinding(base, ARGV[i], vm[1], type(spec) == 'table' and spec or nil))
    n = n + 1
  end
end
return n
