-- take_tokens_multi(KEYS[2i-1]=log, KEYS[2i]=meta of key i = 1..k, ARGV[1]=allowed, ARGV[2]=period_ms,
--                   ARGV[3]=hold_ms, ARGV[3+2i-1]=want of key i, ARGV[3+2i]=min_tokens of key i)
--   -> {tokens_1, delay_us_1, g_us_1, ..., tokens_k, delay_us_k, g_us_k}
-- take_tokens.lua for many windows at once: one grant per key, each key its own exact sliding window of
-- `allowed` per `period` (see take_tokens.lua and DEVELOPERS.md "The token window"; no adaptive mode here).
-- One call serves a whole batch of keys, so Redis calls per job stay near 1 / jobs per batch however many
-- keys there are. All keys share the hash tag of the limiter, so they live on one cluster slot. A quiet
-- key's log and meta expire one second after its last grant stops counting.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = tonumber(ARGV[1])
local period = math.floor(tonumber(ARGV[2]) * 1000)
local hold = math.floor(tonumber(ARGV[3]) * 1000)

local function tokens_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local function grant(log_key, meta_key, want, min_tokens)
  local meta = redis.call('HMGET', meta_key, 'sum', 'last_g', 'seq')
  local sum = tonumber(meta[1]) or 0
  local last_g = tonumber(meta[2]) or 0
  local seq = tonumber(meta[3]) or 0
  if redis.call('EXISTS', log_key) == 0 then
    sum = 0
  elseif not meta[1] then
    for _, member in ipairs(redis.call('ZRANGE', log_key, 0, -1)) do
      sum = sum + tokens_of(member)
    end
  end
  want = math.max(1, math.min(want, allowed))
  min_tokens = math.max(1, math.min(min_tokens, want))
  -- Removes even when nothing expired, as the first write: see take_tokens.lua (a full Redis must grant).
  local function expire(upto)
    local old = redis.call('ZRANGEBYSCORE', log_key, '-inf', upto)
    for _, member in ipairs(old) do
      sum = sum - tokens_of(member)
    end
    redis.call('ZREMRANGEBYSCORE', log_key, '-inf', upto)
  end
  local g = math.max(now, last_g)
  expire(g - period)
  if allowed - sum < min_tokens then
    local need = min_tokens - (allowed - sum)
    local entries = redis.call('ZRANGE', log_key, 0, -1, 'WITHSCORES')
    local released = 0
    local found = false
    for i = 1, #entries, 2 do
      released = released + tokens_of(entries[i])
      if released >= need then
        g = tonumber(entries[i + 1]) + period
        found = true
        break
      end
    end
    if found then
      expire(g - period)
    else
      sum = 0
      for i = 1, #entries, 2 do
        sum = sum + tokens_of(entries[i])
      end
      if #entries > 0 then
        g = math.max(g, tonumber(entries[#entries]) + period)
        expire(g - period)
      end
    end
  end
  local tokens = math.max(1, math.min(want, allowed - sum))
  seq = seq + 1
  redis.call('ZADD', log_key, g + hold, seq .. ':' .. tokens)
  sum = sum + tokens
  redis.call('HSET', meta_key, 'sum', sum, 'last_g', g, 'seq', seq)
  local ttl_ms = math.ceil((g + hold + period - now) / 1000) + 1000
  redis.call('PEXPIRE', log_key, ttl_ms)
  redis.call('PEXPIRE', meta_key, ttl_ms)
  return tokens, g
end

local out = {}
for i = 1, #KEYS / 2 do
  local tokens, g = grant(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i]))
  out[#out + 1] = tokens
  out[#out + 1] = g - now
  out[#out + 1] = g
end
return out
