--[[
  Rewrites the group that records name, by a map of group references (from -> to): the `group`
  field of VM records or spawn records, the `groups` of waiting requests' info (and of a waiting
  set's items), the `swept:<group>`
  fields of the pool's state marker, or the group label of a shared metric's fields. A reference
  not in the map is left as it is, so the call is safe to repeat. Used by the migration to data
  format 2 (index -> name) and by `vmpool group rename` (src/pool/groupNames.ts).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] what to rewrite:
              'vm'      VM records, ARGV[rest] their names
              'spawn'   spawn records, ARGV[rest] their spawn ids
              'waiter'  waiting requests' info (waiter_info), ARGV[rest] their waiter members
              'swept'   the state marker's swept:<group> fields (ARGV[rest] unused)
              'metric'  the fields of shared metrics whose first label is the group, ARGV[rest]
                        the metrics' names (a field `["<from>",...` becomes `["<to>",...`, its
                        count added to one already there)
    ARGV[2] number of map pairs N
    ARGV[3..2+2N] pairs: from, to
  Output:
    the number of records (or fields) rewritten
]]
local base = KEYS[1]
local kind, pairCount = ARGV[1], tonumber(ARGV[2])
--- @include "includes/poolKeys"

local map = {}
for i = 0, pairCount - 1 do
  map[ARGV[3 + 2 * i]] = ARGV[4 + 2 * i]
end
local first = 3 + 2 * pairCount
local changed = 0

local function relabelField(key)
  local to = map[redis.call('HGET', key, 'group') or '']
  if to and redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'group', to)
    changed = changed + 1
  end
end

if kind == 'vm' then
  for i = first, #ARGV do
    relabelField(vmKey(base, ARGV[i]))
  end
elseif kind == 'spawn' then
  for i = first, #ARGV do
    relabelField(spawnRecordKey(base, ARGV[i]))
  end
elseif kind == 'waiter' then
  for i = first, #ARGV do
    local raw = redis.call('HGET', waiterInfoKey(base), ARGV[i])
    if raw then
      local info = cjson.decode(raw)
      local any = false
      if type(info.groups) == 'table' then
        for j, g in ipairs(info.groups) do
          local to = map[tostring(g)]
          if to then
            info.groups[j] = to
            any = true
          end
        end
      end
      -- A waiting set (acquireVmSet) names the groups of each of its items too.
      if type(info.set) == 'table' then
        for _, item in ipairs(info.set) do
          for _, g in ipairs(type(item) == 'table' and type(item.groups) == 'table' and item.groups or {}) do
            local to = type(g) == 'table' and map[tostring(g.group)]
            if to then
              g.group = to
              any = true
            end
          end
        end
      end
      if any then
        redis.call('HSET', waiterInfoKey(base), ARGV[i], cjson.encode(info))
        changed = changed + 1
      end
    end
  end
elseif kind == 'swept' then
  local key = poolStateKey(base)
  for from, to in pairs(map) do
    local generation = redis.call('HGET', key, 'swept:' .. from)
    if generation then
      redis.call('HSETNX', key, 'swept:' .. to, generation)
      redis.call('HDEL', key, 'swept:' .. from)
      changed = changed + 1
    end
  end
elseif kind == 'metric' then
  for i = first, #ARGV do
    local key = metricKey(base, ARGV[i])
    local flat = redis.call('HGETALL', key)
    for j = 1, #flat, 2 do
      local field = flat[j]
      local ref, rest = string.match(field, '^%["([^"]*)"(.*)$')
      local to = ref and map[ref]
      if to then
        redis.call('HINCRBYFLOAT', key, '["' .. to .. '"' .. rest, flat[j + 1])
        redis.call('HDEL', key, field)
        changed = changed + 1
      end
    end
  end
else
  return redis.error_reply('relabelGroups: unknown kind ' .. tostring(kind))
end
return changed
