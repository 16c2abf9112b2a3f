--[[
  Releases a lock held with the given token (another holder's lock is left alone).

  Input:
    KEYS[1] lock key
    ARGV[1] token
  Output:
    1   released
    0   the lock is not held with this token (expired or taken by another holder)
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
