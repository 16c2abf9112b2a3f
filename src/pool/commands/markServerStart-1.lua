--[[
  Records a server start: VMs health-checked before it are not handed out until checked again.
  Besides the time, it records the position of the start in the pool's sequence of events
  (check_seq, which startVmCheck also takes), so that a check in the same millisecond as the start
  still counts as before or after it, by the order in which they happened (includes/serverStart).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
  Output:
    the sequence number of this start (a positive integer)
]]
local base = KEYS[1]
local now = ARGV[1]
--- @include "includes/serverStart"

return markServerStart(base, now)
