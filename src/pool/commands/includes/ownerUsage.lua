--[[
  An owner's resources across groups (issue 22, nodepool's tenant limits): what the VMs bound to
  one owner use, summed over every group (scope 'all') and over the groups naming each account
  (scope 'account:<name>'), held to the top-level max_resources_per_owner and to
  accounts.<name>.max_resources_per_owner.

  A group's usage spec comes from the caller's config (an acquire's ARGV, or a waiting request's
  waiter_info `limits`), never from Redis state another replica wrote (src/reconcile/quota.ts
  ownerUsageSpec): {r = {unit = amount one VM uses, instances = 1}, s = {{n = scope, m = {unit =
  limit}}, ...}}: the scopes a binding of the group counts in (every scope it belongs to, limited
  or not, so that a limit set later counts the VMs bound before it), with their limits (m absent
  or empty: counted, not limited).

  Counting: a clean VM bound to an owner (assignVm, fresh) adds its r to the owner's counter of
  each scope (owner_usage:<scope>:<owner>, HINCRBYFLOAT: units may be fractional) and records on
  the VM (field owner_usage, JSON {s = scope names, r = amounts}) what it added, so that its
  removal (removeVm, the only unbind) subtracts exactly that, whatever the config says by then.
  A VM bound before this release has no record: reconcile counts it at its start
  (countOwnerUsage-1.lua, from its group's resources in its config).

  Blocking: the dispatcher blocks an owner over a scope's limit in a group's line (as one at
  max_vm_per_user) and notes the group (owner_blocked_groups:<owner>); when one of the owner's
  bound VMs goes, the owner is unblocked in each noted group and those groups' ready channels are
  told, so that their dispatch serves it if it fits now (re-blocked otherwise). Bounded by the
  number of groups.

  Shared by acquireVm, dispatchAcquireLine and acquireVmSet (through includes/acquireLine),
  removeVm and countOwnerUsage.
]]
--- @include "includes/lineOwners"

-- Float sums of amounts such as 0.1 are not exact: below this, a counter is 0 and a sum is at its limit.
local OWNER_USAGE_EPSILON = 1e-9

-- A binding whose caller passed no spec (a VM set until its script passes one, a waiting request
-- recorded before this release): 1 instance, counted in scope 'all', not limited.
local DEFAULT_OWNER_USAGE = {r = {instances = 1}, s = {{n = 'all'}}}

-- A spec from its JSON text ('' or nil: none).
local function decodeOwnerUsage(raw)
  if not raw or raw == '' then
    return nil
  end
  return cjson.decode(raw)
end

-- The first scope and unit whose limit one more VM of `spec` would pass for `owner`, counting
-- `pending` too ({scope = {unit = amount}}: what the caller picked in this call and has not
-- bound yet, such as a VM set); nil when it fits (or there is no spec). A unit the VM does not use
-- never blocks. Units are looked at in name order, so that the answer does not depend on the
-- hash order of a Lua table.
local function ownerOverLimit(base, owner, spec, pending)
  if type(spec) ~= 'table' or type(spec.s) ~= 'table' or type(spec.r) ~= 'table' then
    return nil
  end
  for _, scope in ipairs(spec.s) do
    if type(scope.m) == 'table' and next(scope.m) ~= nil then
      local units = {}
      for unit in pairs(scope.m) do
        units[#units + 1] = unit
      end
      table.sort(units)
      local key = ownerUsageKey(base, scope.n, owner)
      local extra = pending and pending[scope.n] or {}
      for _, unit in ipairs(units) do
        local per = tonumber(spec.r[unit]) or 0
        if per > 0 then
          local used = tonumber(redis.call('HGET', key, unit)) or 0
          if used + (extra[unit] or 0) + per > tonumber(scope.m[unit]) + OWNER_USAGE_EPSILON then
            return scope.n, unit
          end
        end
      end
    end
  end
  return nil
end

-- Whether one more clean VM of `spec` may be bound to `owner` (every scope's limit holds it).
local function ownerMayBind(base, owner, spec, pending)
  return ownerOverLimit(base, owner, spec, pending) == nil
end

-- Adds one VM of `spec` to `pending` (for a caller that picks several VMs before binding them).
local function addOwnerPending(pending, spec)
  spec = spec or DEFAULT_OWNER_USAGE
  for _, scope in ipairs(spec.s) do
    local p = pending[scope.n] or {}
    for unit, amount in pairs(spec.r) do
      p[unit] = (p[unit] or 0) + (tonumber(amount) or 0)
    end
    pending[scope.n] = p
  end
end

-- Counts the VM `name` just bound to `owner` (assignVm, fresh) in each scope of `spec` (nil: the
-- default). Returns the VM's owner_usage field value, for the caller to write with the binding.
local function countOwnerBinding(base, name, owner, spec)
  spec = spec or DEFAULT_OWNER_USAGE
  local scopes, amounts = {}, {}
  for unit, amount in pairs(spec.r) do
    if (tonumber(amount) or 0) > 0 then
      amounts[unit] = tonumber(amount)
    end
  end
  for _, scope in ipairs(spec.s) do
    scopes[#scopes + 1] = scope.n
    local key = ownerUsageKey(base, scope.n, owner)
    for unit, amount in pairs(amounts) do
      redis.call('HINCRBYFLOAT', key, unit, amount)
    end
  end
  return cjson.encode({s = scopes, r = amounts})
end

-- Subtracts what the VM `name` bound to `owner` added when it was bound (its owner_usage field;
-- nothing for a VM bound before this release and not counted yet). Called before its record goes.
local function uncountOwnerBinding(base, name, owner)
  local raw = redis.call('HGET', vmKey(base, name), 'owner_usage')
  if not raw then
    return
  end
  local ok, usage = pcall(cjson.decode, raw)
  if not ok or type(usage) ~= 'table' or type(usage.s) ~= 'table' or type(usage.r) ~= 'table' then
    return
  end
  for _, scope in ipairs(usage.s) do
    local key = ownerUsageKey(base, scope, owner)
    for unit, amount in pairs(usage.r) do
      if tonumber(redis.call('HINCRBYFLOAT', key, unit, -tonumber(amount))) <= OWNER_USAGE_EPSILON then
        redis.call('HDEL', key, unit)
      end
    end
  end
end

-- The dispatcher blocked `owner` in `group`'s line for a limit across groups: noted, so that a VM
-- of the owner going in any group unblocks it there (unblockOwnerAcross).
local function noteOwnerBlockedAcross(base, owner, group)
  redis.call('SADD', ownerBlockedGroupsKey(base, owner), group)
end

-- One of `owner`'s bound VMs (`name`, of `group`) went: the owner is unblocked in every group where
-- a limit across groups blocked it, and those groups' ready channels are told (the VM's name, which
-- no longer names a VM: the dispatcher serves every request a ready clean VM can take there). The
-- VM's own group is left to the caller.
local function unblockOwnerAcross(base, owner, group, name)
  local key = ownerBlockedGroupsKey(base, owner)
  local groups = redis.call('SMEMBERS', key)
  if #groups == 0 then
    return
  end
  for _, g in ipairs(groups) do
    if g ~= group then
      unblockOwner(base, g, owner)
      redis.call('PUBLISH', readyChannel(base, g), name)
    end
  end
  redis.call('DEL', key)
end
