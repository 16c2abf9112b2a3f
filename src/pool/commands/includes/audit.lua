--[[
  The audit trail: records one lifecycle event of a VM in the pool's capped stream (audit_events),
  from inside the script that makes the transition, so that the trail never disagrees with the state.
  Each event carries the VM's group, owner, sandbox, task and lease as its hash has them when the
  event is recorded (so record a release before the task fields go, an acquire after they are set).
  Its time is the entry id's (Redis's clock, which orders every event of every process); `extra` is
  a list of more field/value pairs (a reason, who holds it, the new lease expiry), false or '' values
  left out. The stream keeps about audit_max_events entries (MAXLEN ~), DEFAULT_AUDIT_MAX_EVENTS
  when unset. Event names: src/pool/audit.ts.
]]
--- @include "includes/poolKeys"

local DEFAULT_AUDIT_MAX_EVENTS = 100000

-- `known`, when the caller has them: the VM's {group, owner, sandbox, task_id, lease_id} as its hash
-- has them now (false for none), which spares reading them again.
local function recordEvent(base, event, name, extra, known)
  local vm = known or redis.call('HMGET', vmKey(base, name), 'group', 'owner', 'sandbox', 'task_id', 'lease_id')
  local fields = {'event', event, 'vm', name}
  local names = {'group', 'owner', 'sandbox', 'task', 'lease'}
  for i = 1, 5 do
    if vm[i] then
      fields[#fields + 1] = names[i]
      fields[#fields + 1] = vm[i]
    end
  end
  if extra then
    for i = 1, #extra, 2 do
      if extra[i + 1] and extra[i + 1] ~= '' then
        fields[#fields + 1] = extra[i]
        fields[#fields + 1] = tostring(extra[i + 1])
      end
    end
  end
  local max = tonumber(redis.call('GET', auditMaxEventsKey(base))) or DEFAULT_AUDIT_MAX_EVENTS
  redis.call('XADD', auditEventsKey(base), 'MAXLEN', '~', max, '*', unpack(fields))
end
