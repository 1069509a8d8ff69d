-- penalize(KEYS[1]=meta, ARGV[1]=allowed, ARGV[2]=period_ms, ARGV[3]=decrease_factor, ARGV[4]=recover_per_s)
--   -> effective allowed after the penalty (string)
-- Multiplies the shared effective allowed by decrease_factor (never below 1), at most once per period: many
-- callers refused in the same burst report one congestion event, not one each.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = tonumber(ARGV[1])
local period = math.floor(tonumber(ARGV[2]) * 1000)
local factor = tonumber(ARGV[3])
local recover_per_s = tonumber(ARGV[4])
local meta = redis.call('HMGET', KEYS[1], 'eff', 'eff_at', 'penalized_at')
local effective = allowed
local eff, eff_at = tonumber(meta[1]), tonumber(meta[2])
if eff and eff_at then
  effective = math.min(allowed, eff + recover_per_s * math.max(0, now - eff_at) / 1000000)
end
local penalized_at = tonumber(meta[3])
if not penalized_at or now - penalized_at >= period then
  effective = math.max(1, effective * factor)
  penalized_at = now
end
redis.call('HSET', KEYS[1], 'eff', tostring(effective), 'eff_at', now, 'penalized_at', penalized_at)
local ttl_ms = math.ceil(period / 1000) + 1000
if recover_per_s > 0 then
  ttl_ms = math.max(ttl_ms, math.ceil((allowed - effective) / recover_per_s * 1000) + 1000)
end
-- Never shorten the life take_tokens gave meta: it also holds the running sum of a live log.
ttl_ms = math.max(ttl_ms, redis.call('PTTL', KEYS[1]))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return tostring(effective)
