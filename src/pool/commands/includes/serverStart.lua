--[[
  Records a server start (markServerStart, recoverPool): its time, and its position in the pool's
  sequence of events (check_seq, which startVmCheck also takes), so that a check in the same
  millisecond as the start still counts as before or after it. Returns the start's sequence number.
]]
--- @include "includes/poolKeys"

local function markServerStart(base, now)
  local seq = redis.call('INCR', checkSeqKey(base))
  redis.call('SET', serverStartKey(base), now)
  redis.call('SET', serverStartSeqKey(base), seq)
  return seq
end
