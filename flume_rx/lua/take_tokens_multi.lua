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

local function grant(log_key, meta_key, want, min_tokens)
  local meta = redis.call('HMGET', meta_key, 'sum', 'last_g', 'seq')
  local sum = window_sum(log_key, meta[1])
  local last_g = tonumber(meta[2]) or 0
  local seq = tonumber(meta[3]) or 0
  want = math.max(1, math.min(want, allowed))
  min_tokens = math.max(1, math.min(min_tokens, want))
  local g
  g, sum = window_walk(log_key, sum, math.max(now, last_g), allowed, min_tokens, period)
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
