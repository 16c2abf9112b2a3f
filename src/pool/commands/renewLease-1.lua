--[[
  Extends the lease of an in_use VM by its lease_timeout_ms (stored at acquire, so no config is
  needed). Only the holder of the lease may renew.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] lease id
    ARGV[3] now (epoch ms)
    ARGV[4] the data-format version the caller knows (includes/dataFormat)
  Output:
    {OK, new expiry (epoch ms, as text)}  renewed
    {NOT_FOUND}                           no such VM
    {WRONG_STATE}                         the VM is not in_use (released, expired or terminating)
    {LEASE_MISMATCH}                      the VM is in_use under another lease
    {DATA_FORMAT_AHEAD, version needed}   the pool's data format is past the caller's (nothing changed)
]]
local base = KEYS[1]
local name, leaseId, now, knownFormat = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
--- @include "includes/replyCodes"
--- @include "includes/audit"
--- @include "includes/dataFormat"

local needed = dataFormatAhead(base, knownFormat)
if needed then
  return {DATA_FORMAT_AHEAD, needed}
end

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'lease_id', 'lease_timeout_ms')
if not vm[1] then
  return {NOT_FOUND}
end
if vm[1] ~= 'in_use' then
  return {WRONG_STATE}
end
if vm[2] ~= leaseId then
  return {LEASE_MISMATCH}
end
local expiresAt = now + (tonumber(vm[3]) or 0)
redis.call('HSET', key, 'lease_expires_at', expiresAt)
redis.call('ZADD', leasesKey(base), expiresAt, name)
recordEvent(base, 'lease_renewed', name, {'lease_expires_at', expiresAt})
return {OK, tostring(expiresAt)}
