--[[
  Records a server start: VMs health-checked before it are not handed out until checked again.
  Besides the time, it records the position of the start in the pool's sequence of events
  (check_seq, which startVmCheck also takes), so that a check in the same millisecond as the start
  still counts as before or after it, by the order in which they happened.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] now (epoch ms)
  Output:
    the sequence number of this start
]]
local base = KEYS[1]
local now = ARGV[1]
local seq = redis.call('INCR', base .. 'check_seq')
redis.call('SET', base .. 'server_start', now)
redis.call('SET', base .. 'server_start_seq', seq)
return seq
