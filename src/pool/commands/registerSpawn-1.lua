--[[
  Records a spawn in flight: it takes a slot of its group's spawns (against max_vm_total) until its
  VM is added (addVm) or it ends (finishSpawn). With resource limits, it first checks that one more
  VM fits them, counting what the pool has at this moment (so that two replicas deciding from
  older snapshots cannot both overshoot).

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] group id
    ARGV[2] spawn id
    ARGV[3] now (epoch ms), the slot's score
    ARGV[4] optional: JSON of the limits to fit, {"limits": [{"name": "group"|"account",
            "max": {unit: amount}, "groups": {group: {unit: amount per VM}}}]}. Each limit counts
            its groups' VMs not terminating plus their spawns in flight, times what one VM uses.
  Output:
    OK          recorded
    QUOTA_FULL  not recorded: {QUOTA_FULL, limit name, unit} of the first limit one more VM would pass
]]
local base = KEYS[1]
local group, spawnId, now = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/spawnSlots"

local ACTIVE_STATES = { 'got_ip', 'check_health', 'check_health_failed', 'ready', 'in_use' }

local function vmsAndSpawns(g)
  local n = redis.call('ZCARD', spawningKey(base, g))
  for _, state in ipairs(ACTIVE_STATES) do
    n = n + redis.call('SCARD', stateKey(base, g, state))
  end
  return n
end

if ARGV[4] and ARGV[4] ~= '' then
  local check = cjson.decode(ARGV[4])
  for _, limit in ipairs(check.limits) do
    local used = {}
    for g, per in pairs(limit.groups) do
      local n = vmsAndSpawns(g)
      for unit, amount in pairs(per) do
        used[unit] = (used[unit] or 0) + n * amount
      end
    end
    local mine = limit.groups[group] or {}
    local units = {}
    for unit in pairs(limit.max) do
      table.insert(units, unit)
    end
    table.sort(units)
    for _, unit in ipairs(units) do
      local extra = tonumber(mine[unit] or 0)
      if extra > 0 and (used[unit] or 0) + extra > tonumber(limit.max[unit]) then
        return { QUOTA_FULL, limit.name, unit }
      end
    end
  end
end

addSpawnSlot(base, group, spawnId, now)
return OK
