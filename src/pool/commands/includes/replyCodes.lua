--[[
  Reply codes of the pool scripts: the table of src/pool/replyCodes.ts, which says what each means.
  Positive: done as asked; negative: not done, and why.
]]
local OK = 1
local REATTACHED = 2
local CHECK_FAILED = 3
local TERMINATING = 4
local OPENED = 5
local CREATED = 6
local NOT_FOUND = -1
local WRONG_STATE = -2
local LEASE_MISMATCH = -3
local ALREADY_EXISTS = -4
local ALREADY_HELD = -5
local NOT_HELD = -6
local TASK_CONFLICT = -7
local NO_VM = -8
local DEFERRED = -9
local LOCK_NOT_HELD = -10
local CANCELLED = -11
local MACHINE_PENDING = -12
local NO_SPAWN_SLOT = -13
local POOL_LOST = -14
local POOL_CHANGED = -15
local POOL_RESTARTED = -16
local POOL_REGRESSED = -17
local TOO_MANY_WAITING = -18
local DATA_FORMAT_AHEAD = -19
local SUPERSEDED = -20
