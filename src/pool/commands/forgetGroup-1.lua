--[[
  Forgets a group removed from the config once it is empty: no VM in any state, no spawn in
  flight, no waiting request. Its keys (the tails given, after `group:<name>:`) are deleted and it
  leaves the registry of known groups. Checked here, atomically, so that a VM added or a request
  parked meanwhile keeps the group (src/pool/groupState.ts, reconcile's cycle).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the group's name
    ARGV[2..] the tails of its keys to delete
  Output:
    OK           forgotten
    WRONG_STATE  it still has a VM, a spawn in flight or a waiting request (nothing changed)
]]
local base = KEYS[1]
local group = ARGV[1]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

for _, state in ipairs({'got_ip', 'check_health', 'check_health_failed', 'ready', 'in_use', 'terminating'}) do
  if redis.call('SCARD', stateKey(base, group, state)) > 0 then
    return WRONG_STATE
  end
end
if redis.call('ZCARD', spawningKey(base, group)) > 0 or redis.call('ZCARD', waitersKey(base, group)) > 0 then
  return WRONG_STATE
end
for i = 2, #ARGV do
  redis.call('DEL', groupKeyPrefixKey(base, group) .. ARGV[i])
end
redis.call('SREM', groupRegistryKey(base), group)
return OK
