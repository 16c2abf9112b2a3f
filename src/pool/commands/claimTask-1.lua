--[[
  Claims an owner's task id for a sandbox before a builder enqueues its acquire request, so that no
  request of another of the owner's sandboxes can join it or be served under that task while it
  waits (includes/taskOwner). Task ids are per owner: another owner's task of the same id is another
  task, never a conflict. The same owner and sandbox may claim their own task again (a restarted
  builder reattaches).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] task id
    ARGV[3] owner
    ARGV[4] sandbox
    ARGV[5] claim deadline (epoch ms): when the request stops waiting
    ARGV[6] the data-format version the caller knows (includes/dataFormat)
  Output:
    OK             claimed (or claimed already by the same owner and sandbox); nothing else changed
    TASK_CONFLICT  the owner's task holds a VM, or is claimed, for another of the owner's sandboxes;
                   nothing changed
    {DATA_FORMAT_AHEAD, version needed}  the pool's data format is past the caller's (nothing changed)
]]
local base = KEYS[1]
local now, taskId, owner, sandbox, deadline, knownFormat = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
--- @include "includes/replyCodes"
--- @include "includes/taskOwner"
--- @include "includes/dataFormat"

local needed = dataFormatAhead(base, knownFormat)
if needed then
  return {DATA_FORMAT_AHEAD, needed}
end

if taskOfAnother(base, taskId, owner, sandbox, now) then
  return TASK_CONFLICT
end
claimTask(base, taskId, owner, sandbox, deadline, now)
return OK
