-- _window: the sliding-window walk of take_tokens.lua and take_tokens_multi.lua, written once. It is not a
-- script of its own: both scripts begin with it when they are loaded (_PRELUDES in flume_rx/store/scripts.py),
-- so the two windows cannot drift apart.
-- A log is a zset of "seq:tokens" scored g + hold (g: the grant's start, unix us); an entry stops counting
-- for a grant starting at g' once its score is <= g' - period. `sum` is the running total of counted tokens.

local function window_tokens_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

-- The counted tokens of log_key, from meta's running sum (or rebuilt from the log when meta vanished).
local function window_sum(log_key, meta_sum)
  if redis.call('EXISTS', log_key) == 0 then
    -- The log vanished (expired or evicted): nothing is counted any more.
    return 0
  end
  if meta_sum then
    return tonumber(meta_sum)
  end
  -- meta vanished while the log lives: rebuild the running sum from the log rather than trust zero.
  local sum = 0
  for _, member in ipairs(redis.call('ZRANGE', log_key, 0, -1)) do
    sum = sum + window_tokens_of(member)
  end
  return sum
end

-- The earliest start g >= from at which min_tokens of cap are free in log_key, expiring every entry that no
-- longer counts at g. Returns g and the tokens still counted at g.
local function window_walk(log_key, sum, from, cap, min_tokens, period)
  -- Entries scored <= upto no longer count for any grant at or after upto + period. The removal runs even when
  -- nothing expired, so it is the script's first write: under maxmemory (noeviction) Redis refuses a script
  -- whose first write may grow memory (ZADD, HSET), and the window's log is bounded and expires by itself,
  -- while a full Redis must still grant tokens, or no rate-limited pipeline could drain it.
  local function expire(upto)
    local old = redis.call('ZRANGEBYSCORE', log_key, '-inf', upto)
    for _, member in ipairs(old) do
      sum = sum - window_tokens_of(member)
    end
    redis.call('ZREMRANGEBYSCORE', log_key, '-inf', upto)
  end
  local g = from
  expire(g - period)
  if cap - sum < min_tokens then
    local need = min_tokens - (cap - sum)
    local entries = redis.call('ZRANGE', log_key, 0, -1, 'WITHSCORES')
    local released = 0
    local found = false
    for i = 1, #entries, 2 do
      released = released + window_tokens_of(entries[i])
      if released >= need then
        g = tonumber(entries[i + 1]) + period
        found = true
        break
      end
    end
    if found then
      expire(g - period)
    else
      -- The running sum disagrees with the log (it cannot when both keys live and die together): trust the log.
      sum = 0
      for i = 1, #entries, 2 do
        sum = sum + window_tokens_of(entries[i])
      end
      if #entries > 0 then
        g = math.max(g, tonumber(entries[#entries]) + period)
        expire(g - period)
      end
    end
  end
  return g, sum
end
