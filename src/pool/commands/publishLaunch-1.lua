--[[
  Publishes a process's launch configuration of a group as the group's current one, or says that a
  newer one is published (src/reconcile/rollout.ts; docs/operating.md, "Rolling out a new image").

  Which configuration wins, so that replicas with old and new configs side by side never flap:
    - none published yet: the caller's;
    - the same fingerprint: nothing changes;
    - a higher launch_revision than the published one: the caller's (an explicit bump wins);
    - a lower launch_revision: the published one (SUPERSEDED);
    - the same launch_revision: the caller's only if the caller started after the published one
      was published (the most recently started process's config wins: a rolling restart moves the
      pool forward) and its fingerprint was never superseded on this group, else the published
      one (SUPERSEDED). A fingerprint that was current once and replaced is kept in the record's
      `superseded` (the last SUPERSEDED_KEPT, space-separated): a stale replica restarted with the
      old config (its machine's config not yet updated) never rolls the group back by its start.
      A rollback on purpose bumps launch_revision, or is the orphan takeover below.
  Every publication sets published_at to now, after every running process's start: only a process
  started later can take over again, so the number of changes is bounded by process starts.
  A published config that no process has confirmed (called with the same fingerprint, once a
  cycle) for ARGV[9] ms is orphaned: its processes are gone, and any caller takes over, so that a
  group whose newer processes were all stopped is not left without decisions.

  The first publication on a group (no record yet) stamps its VMs that have no launch_fingerprint
  (made before fingerprints, or added by hand) with the new fingerprint, so that a later change
  rolls them out like any other. Once only: later publications never stamp.

  A publication puts each VM of the group (not terminating) in or out of `outdated`: outdated when
  it has a launch_fingerprint (a VM added by hand, or from before fingerprints, has none) and it is
  not the new one. A clean ready VM moves between ready_clean and ready_outdated, a bound ready one
  leaves its ready index (includes/setVmState: addToReadyIndex), and an outdated VM on its way to
  ready no longer counts as coming supply. O(VMs of the group), once per change.
  A SUPERSEDED caller is recorded in launch_deferring (for the pool page), entries older than
  ARGV[7] dropped.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] group id
    ARGV[2] the caller's launch fingerprint of the group
    ARGV[3] the caller's launch_revision of the group
    ARGV[4] when the caller's process started (epoch ms)
    ARGV[5] the caller's process id (host:pid:random)
    ARGV[6] now (epoch ms)
    ARGV[7] how long a deferring process is remembered without being seen again (ms)
    ARGV[8] the group's max_ready_age (ms; '' for none): kept as max_ready_age_ms by a current
            caller, so that setVmState records first_ready_at (and due:ready_age) only where it counts
    ARGV[9] after how long without a confirmation the published config is orphaned (ms)
  Output:
    {OK, revision}                       the caller's fingerprint is the current one
    {CREATED, revision, changed}         published now (changed: VMs that entered or left outdated,
                                         or were stamped by the first publication)
    {SUPERSEDED, fingerprint, revision, launch_revision, published_at, published_by}
                                         another configuration is current; nothing changed but
                                         launch_deferring
]]
local base = KEYS[1]
local group, fingerprint, launchRevision = ARGV[1], ARGV[2], tonumber(ARGV[3])
local startedAt, processId, now, deferringTtl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local maxReadyAge, orphanedAfter = ARGV[8] or '', tonumber(ARGV[9])
--- @include "includes/replyCodes"
--- @include "includes/setVmState"

local key = launchKey(base, group)
local rec = redis.call('HMGET', key, 'fingerprint', 'launch_revision', 'revision', 'published_at', 'published_by', 'confirmed_at', 'max_ready_age_ms', 'superseded')
local current, currentLaunchRevision, revision = rec[1], tonumber(rec[2]) or 0, tonumber(rec[3]) or 0
local publishedAt = tonumber(rec[4]) or 0
local confirmedAt = tonumber(rec[6]) or publishedAt
local orphaned = confirmedAt < now - orphanedAfter
-- How many superseded fingerprints a group's record keeps (the most recent): more than a group
-- goes through within one rolling restart.
local SUPERSEDED_KEPT = 16
local superseded = {}
for fp in string.gmatch(rec[8] or '', '%S+') do
  superseded[#superseded + 1] = fp
end
local wasSuperseded = false
for _, fp in ipairs(superseded) do
  if fp == fingerprint then
    wasSuperseded = true
  end
end

-- Written only when it changes: most calls (one per group and cycle) write nothing.
local function keepMaxReadyAge()
  if maxReadyAge ~= (rec[7] or '') then
    if maxReadyAge ~= '' then
      redis.call('HSET', key, 'max_ready_age_ms', maxReadyAge)
    else
      redis.call('HDEL', key, 'max_ready_age_ms')
    end
  end
end

if current == fingerprint then
  keepMaxReadyAge()
  -- A tenth of the orphan time is precise enough, and spares a write at most cycles.
  if confirmedAt < now - orphanedAfter / 10 then
    redis.call('HSET', key, 'confirmed_at', now)
  end
  return {OK, revision}
end
if current and not orphaned and (launchRevision < currentLaunchRevision or (launchRevision == currentLaunchRevision and (startedAt <= publishedAt or wasSuperseded))) then
  local deferring = launchDeferringKey(base, group)
  redis.call('ZADD', deferring, now, processId .. '|' .. fingerprint)
  redis.call('ZREMRANGEBYSCORE', deferring, '-inf', now - deferringTtl)
  return {SUPERSEDED, current, revision, currentLaunchRevision, publishedAt, rec[5] or ''}
end

-- The replaced fingerprint joins superseded; the caller's leaves it (a rollback made it current).
local kept = {}
for _, fp in ipairs(superseded) do
  if fp ~= fingerprint and fp ~= current then
    kept[#kept + 1] = fp
  end
end
if current then
  kept[#kept + 1] = current
end
while #kept > SUPERSEDED_KEPT do
  table.remove(kept, 1)
end
local firstPublication = not current
revision = revision + 1
redis.call('HSET', key, 'fingerprint', fingerprint, 'launch_revision', launchRevision, 'revision', revision,
  'published_at', now, 'published_by', processId, 'started_at', startedAt, 'confirmed_at', now,
  'superseded', table.concat(kept, ' '))
keepMaxReadyAge()
-- The caller no longer defers, whatever it ran before.
for _, member in ipairs(redis.call('ZRANGE', launchDeferringKey(base, group), 0, -1)) do
  if string.sub(member, 1, string.len(processId) + 1) == processId .. '|' then
    redis.call('ZREM', launchDeferringKey(base, group), member)
  end
end

local changed = 0
for _, state in ipairs({'got_ip', 'check_health', 'check_health_failed', 'ready', 'in_use'}) do
  for _, name in ipairs(redis.call('SMEMBERS', stateKey(base, group, state))) do
    local vm = redis.call('HMGET', vmKey(base, name), 'launch_fingerprint', 'owner', 'sandbox', 'held_by', 'last_health_check')
    if firstPublication and (vm[1] == false or vm[1] == '') then
      -- Made before fingerprints: it is of the first published launch from now on.
      redis.call('HSET', vmKey(base, name), 'launch_fingerprint', fingerprint)
      vm[1] = fingerprint
      changed = changed + 1
    end
    local outdated = vm[1] ~= false and vm[1] ~= '' and vm[1] ~= fingerprint
    if outdated ~= isOutdated(base, name, group) then
      changed = changed + 1
      local indexed = state == 'ready' and not vm[4]
      if indexed then
        removeFromReadyIndex(base, name, group, vm[2], vm[3])
      end
      if outdated then
        redis.call('SADD', outdatedKey(base, group), name)
      else
        redis.call('SREM', outdatedKey(base, group), name)
      end
      if indexed then
        addToReadyIndex(base, name, group, vm[2], vm[3], tonumber(vm[5]) or 0)
        redis.call('PUBLISH', readyChannel(base, group), name)
      end
      indexDue(base, name)
    end
  end
end
return {CREATED, revision, changed}
