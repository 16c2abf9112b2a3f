--[[
  Moves keys of one group to another group's name: each key `group:<from>:<tail>` becomes
  `group:<to>:<tail>`. Safe to repeat: a key already moved (its source gone) is skipped. When the
  destination exists too (a process of the old layout wrote the source again after a move), the
  two are merged and the source deleted: sets and hashes keep every member (a hash field already
  at the destination wins), sorted sets keep the higher score, lists are appended, strings keep
  the larger number. Used by the migration to data format 2 (index -> name) and by
  `vmpool group rename` (src/pool/groupNames.ts).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the group the keys belong to (a version-1 index, or an old name)
    ARGV[2] the group they move to (a name)
    ARGV[3..] the tails of the keys to move (after `group:<from>:`)
  Output:
    the number of keys moved or merged
]]
local base = KEYS[1]
local from, to = ARGV[1], ARGV[2]
--- @include "includes/poolKeys"

local moved = 0
for i = 3, #ARGV do
  local src = groupKeyPrefixKey(base, from) .. ARGV[i]
  local dst = groupKeyPrefixKey(base, to) .. ARGV[i]
  local kind = redis.call('TYPE', src)['ok']
  if kind ~= 'none' and src ~= dst then
    if redis.call('EXISTS', dst) == 0 then
      redis.call('RENAME', src, dst)
    elseif kind == 'set' then
      redis.call('SUNIONSTORE', dst, dst, src)
    elseif kind == 'zset' then
      redis.call('ZUNIONSTORE', dst, 2, dst, src, 'AGGREGATE', 'MAX')
    elseif kind == 'hash' then
      local flat = redis.call('HGETALL', src)
      for j = 1, #flat, 2 do
        redis.call('HSETNX', dst, flat[j], flat[j + 1])
      end
    elseif kind == 'list' then
      local items = redis.call('LRANGE', src, 0, -1)
      for j = 1, #items do
        redis.call('RPUSH', dst, items[j])
      end
    elseif kind == 'string' then
      local a, b = tonumber(redis.call('GET', src)), tonumber(redis.call('GET', dst))
      if a and b and a > b then
        redis.call('SET', dst, a)
      end
    end
    redis.call('DEL', src)
    moved = moved + 1
  end
end
return moved
