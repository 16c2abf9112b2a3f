--[[
  Autohold (Zuul's): rules in the hash autohold_rules (id -> JSON {id, owner, sandbox, group,
  count, for, reason, by, created_at}); owner, sandbox and group are globs (`*` any run of
  characters, `?` one; an empty pattern matches anything). A failed build's VM that a rule matches
  is held instead of going back to the pool, and the rule's count runs down by one here, in the
  release's own script, so two releases cannot both take its last count. A rule whose count reaches
  0 is deleted.
  Needs: poolKeys, setVmState, audit, hold.
]]

-- Whether `text` matches the glob `pattern` (anchored; every other character literal).
local function globMatch(pattern, text)
  if pattern == nil or pattern == '' or pattern == '*' then
    return true
  end
  local lua = '^' .. pattern:gsub('[%^%$%(%)%%%.%[%]%+%-]', '%%%0'):gsub('%*', '.*'):gsub('%?', '.') .. '$'
  return string.find(text or '', lua) ~= nil
end

-- Holds the VM for the first rule (in id order) that matches it and has a count left, for the
-- rule's `for` seconds (capped by max_hold_age when the rule was added; 0: until unheld). Returns
-- the rule's id, or false when none matched.
local function applyAutohold(base, name, now)
  local rules = redis.call('HGETALL', autoholdRulesKey(base))
  if #rules == 0 then
    return false
  end
  local vm = redis.call('HMGET', vmKey(base, name), 'group', 'owner', 'sandbox', 'state', 'held_by')
  if vm[4] == 'terminating' or vm[5] then
    return false
  end
  local ids = {}
  local byId = {}
  for i = 1, #rules, 2 do
    local id = tonumber(rules[i])
    if id then
      ids[#ids + 1] = id
      byId[id] = rules[i + 1]
    end
  end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local ok, rule = pcall(cjson.decode, byId[id])
    if ok and type(rule) == 'table' and (tonumber(rule.count) or 0) > 0
      and globMatch(rule.group, vm[1]) and globMatch(rule.owner, vm[2]) and globMatch(rule.sandbox, vm[3]) then
      rule.count = tonumber(rule.count) - 1
      if rule.count <= 0 then
        redis.call('HDEL', autoholdRulesKey(base), tostring(id))
      else
        redis.call('HSET', autoholdRulesKey(base), tostring(id), cjson.encode(rule))
      end
      local forMs = (tonumber(rule['for']) or 0) * 1000
      local heldUntil = ''
      if forMs > 0 then
        heldUntil = tostring(math.floor(tonumber(now) + forMs))
      end
      startHold(base, name, 'autohold:' .. id, now, heldUntil, rule.reason or '', {'rule', tostring(id)})
      return id
    end
  end
  return false
end
