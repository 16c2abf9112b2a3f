--[[
  accept-new host keys: the first SSH host key a VM offered is kept in its record (field host_key),
  so that every health replica on every machine gets the same answer in one lookup, and the key is
  forgotten with the record when the VM leaves the pool. Keyed by name and IP: a new VM at an old
  address is a new record with no key yet.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] VM IP the key was offered at
    ARGV[3] the offered host key, `<type> <base64>`
  Output:
    {OK, key}   the key kept for the VM: the offered one when none was kept yet, else the one kept
    NOT_FOUND   no VM of that name at that IP (nothing kept)
]]
local base = KEYS[1]
local name, ip, offered = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'vm_ip', 'host_key')
if vm[1] ~= ip then
  return NOT_FOUND
end
if vm[2] then
  return {OK, vm[2]}
end
redis.call('HSET', key, 'host_key', offered)
return {OK, offered}
