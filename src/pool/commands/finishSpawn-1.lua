--[[
  Ends a spawn in flight: its slot among its group's spawns goes (a spawn whose VM was added has
  none left: addVm took it).

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] group id
    ARGV[2] spawn id
  Output:
    OK             the slot was dropped
    NO_SPAWN_SLOT  the spawn held no slot (nothing changed)
]]
local base = KEYS[1]
local group, spawnId = ARGV[1], ARGV[2]
--- @include "includes/replyCodes"
--- @include "includes/spawnSlots"

if takeSpawnSlot(base, group, spawnId) then
  return OK
end
return NO_SPAWN_SLOT
