--[[
  Records a spawn in flight: it takes a slot of its group's spawns (against max_vm_total) until its
  VM is added (addVm) or it ends (finishSpawn).

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] group id
    ARGV[2] spawn id
    ARGV[3] now (epoch ms), the slot's score
  Output:
    OK  recorded
]]
local base = KEYS[1]
local group, spawnId, now = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/spawnSlots"

addSpawnSlot(base, group, spawnId, now)
return OK
