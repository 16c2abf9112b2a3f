--[[
  Extends a lock held with the given token (another holder's lock is left alone).

  Input:
    KEYS[1] lock key
    ARGV[1] token
    ARGV[2] new time to live (ms)
  Output:
    1   extended
    0   the lock is not held with this token (expired or taken by another holder)
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
