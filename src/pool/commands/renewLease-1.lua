--[[
  Extends the lease of an in_use VM by its lease_timeout_ms (stored at acquire, so no config is
  needed). Only the holder of the lease may renew.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
    ARGV[2] lease id
    ARGV[3] now (epoch ms)
  Output:
    {'renewed', new expiry (epoch ms)}
    {'missing'}         no such VM
    {'not_in_use'}      the VM is not in_use (released, expired or terminating)
    {'lease_mismatch'}  the VM is in_use under another lease
]]
local base = KEYS[1]
local name, leaseId, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
--- @include "includes/poolKeys"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'lease_id', 'lease_timeout_ms')
if not vm[1] then
  return {'missing'}
end
if vm[1] ~= 'in_use' then
  return {'not_in_use'}
end
if vm[2] ~= leaseId then
  return {'lease_mismatch'}
end
local expiresAt = now + (tonumber(vm[3]) or 0)
redis.call('HSET', key, 'lease_expires_at', expiresAt)
redis.call('ZADD', leasesKey(base), expiresAt, name)
return {'renewed', tostring(expiresAt)}
