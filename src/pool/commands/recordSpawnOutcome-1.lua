--[[
  Records the outcome of a spawn in the group's circuit breaker (a hash, breakerKey).

  A failure of class C counts as one more failure in a row when the last failure had class C (else
  the run starts again at 1). The breaker opens:
    - when the run reaches ARGV[5] failures, for ARGV[6] * 2^openings seconds (at most ARGV[7]);
    - at once, when the probe of an open breaker failed (open_until passed), with the next backoff;
    - at once and until reset, for a class an operator must fix (auth, invalid_request): open_until 0.
  A success closes it (openings, the run and the manual flag are cleared).
  'reset' (an operator) closes it the same way.

  Fields: state (closed|open), error_class, failures, openings, opened_at, open_until (epoch ms; 0
  with manual = 1: until reset), message.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] group id
    ARGV[2] outcome: 'ok', 'failed' or 'reset'
    ARGV[3] error class of a failure ('' otherwise)
    ARGV[4] now (epoch ms)
    ARGV[5] failures in a row that open the breaker
    ARGV[6] first backoff (seconds)
    ARGV[7] longest backoff (seconds)
    ARGV[8] '1' when the class needs an operator
    ARGV[9] the hook's message ('' for none)
  Output:
    OPENED   the breaker opened with this outcome
    OK       anything else (counted, closed, or still open)
]]
local base = KEYS[1]
local group, outcome, errorClass, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local threshold, backoff, maxBackoff, manual, message = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local key = breakerKey(base, group)
if outcome ~= 'failed' then
  if redis.call('EXISTS', key) == 1 then
    redis.call('DEL', key)
  end
  return OK
end

local b = redis.call('HMGET', key, 'state', 'error_class', 'failures', 'openings', 'open_until')
local state, lastClass = b[1] or 'closed', b[2]
local failures = tonumber(b[3]) or 0
local openings = tonumber(b[4]) or 0
local openUntil = tonumber(b[5]) or 0
if lastClass == errorClass then
  failures = failures + 1
else
  failures = 1
end
redis.call('HSET', key, 'error_class', errorClass, 'failures', failures, 'message', message)

local function open(untilReset)
  local seconds = math.min(maxBackoff, backoff * (2 ^ openings))
  local untilMs = 0
  if not untilReset then
    untilMs = now + seconds * 1000
  end
  redis.call('HSET', key, 'state', 'open', 'openings', openings + 1, 'opened_at', now, 'open_until', untilMs, 'manual', untilReset and 1 or 0)
  return OPENED
end

if manual then
  return open(true)
end
if state == 'open' then
  if openUntil > 0 and now >= openUntil then
    -- The probe failed: open again, for longer.
    return open(false)
  end
  return OK
end
if failures >= threshold then
  return open(false)
end
return OK
