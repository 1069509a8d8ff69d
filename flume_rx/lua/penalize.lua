-- penalize(KEYS[1]=log, KEYS[2]=meta, KEYS[3]=refusals, ARGV[1]=allowed, ARGV[2]=period_ms, ARGV[3]=hold_ms,
--          ARGV[4]=refused, ARGV[5]=margin, ARGV[6]=probe, ARGV[7]=most_cut, ARGV[8]=age_ms,
--          ARGV[9]=headroom, ARGV[10]=channel ('' for none), ARGV[11]=reporter)
--   -> {effective allowed after it (string), ceiling (string), accepted per period (string, '' if unmeasured),
--       now_us}
-- The downstream refused `refused` calls, the first of which started age_ms ago: aim the shared rate at what it
-- accepted. That is measured over the period that ended when that call started (what the downstream had
-- accepted when it refused; calls started since are still under way, and after a refusal most will be refused
-- too): the tokens of grants of take_tokens.lua whose calls may have started in it (g from a hold before it: a
-- grant's calls start within [g, g + hold]), minus the calls refused in it (the refusals zset, "seq:count"
-- scored by the refused calls' start), per period. The new
-- ceiling and the time of this refusal go into meta; take_tokens.lua probes upward from them. The formulas are
-- those of operators/_adaptive.py (probed_rate, accepted_per_period, ceiling_after_refusal, recovery_s).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = tonumber(ARGV[1])
local period = math.floor(tonumber(ARGV[2]) * 1000)
local hold = math.floor(tonumber(ARGV[3]) * 1000)
local refused = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local probe = tonumber(ARGV[6])
local most_cut = tonumber(ARGV[7])
local age = math.max(0, math.floor(tonumber(ARGV[8]) * 1000))
local headroom = tonumber(ARGV[9])
local plateau = (margin / probe) ^ (1 / 3)

local meta = redis.call('HMGET', KEYS[2], 'ceiling', 'cut_at', 'last_g', 'rseq')
local current = allowed
local ceiling = tonumber(meta[1])
local cut_at = tonumber(meta[2])
if ceiling and cut_at then
  -- The rate in force, as take_tokens.lua computes it: the tokens still counted are those scored after
  -- now - period.
  local used = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.0f', now - period), '+inf')) do
    used = used + tonumber(string.match(member, ':(%d+)$'))
  end
  local offset = math.max(0, now - cut_at) / 1000000 / (period / 1000000) - plateau
  current = math.min(allowed, ceiling * (1 + probe * offset * offset * offset))
  if headroom then
    current = math.min(current, math.max(ceiling, used * (1 + headroom)))
  end
  current = math.max(1, current)
end

-- take_tokens.lua drops grants with g <= last_g - period - hold: the period measured starts no earlier, and
-- the hold before it counts as far as the log still holds it (InProcessWindow holds it all).
-- Entries are scored g + hold: g in (from, upto] is a score in (from + hold, upto + hold].
local upto = now - age
local since = upto - period
local from = since - hold
local last_g = tonumber(meta[3])
if last_g and redis.call('EXISTS', KEYS[1]) == 1 then
  since = math.max(since, last_g - period - hold)
  from = math.max(from, last_g - period - hold)
end
local started = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.0f', from + hold), upto + hold)) do
  started = started + tonumber(string.match(member, ':(%d+)$'))
end
local rseq = redis.call('HINCRBY', KEYS[2], 'rseq', 1)
redis.call('ZADD', KEYS[3], upto, rseq .. ':' .. refused)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 2 * period)
local refusals = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], string.format('(%.0f', since), upto)) do
  refusals = refusals + tonumber(string.match(member, ':(%d+)$'))
end

local accepted = nil
local span = upto - since
if span > 0 then
  accepted = math.max(0, started - refusals) * period / span
end
if accepted == nil then
  ceiling = math.max(1, current)
else
  ceiling = math.max(1, math.min(current / (1 - margin), math.max(accepted, current * most_cut)))
end
local offset = -plateau
local effective = math.max(1, math.min(allowed, ceiling * (1 + probe * offset * offset * offset)))
redis.call('HSET', KEYS[2], 'ceiling', tostring(ceiling), 'cut_at', now, 'rate', tostring(effective))
-- Every process holding a grant from before this cut hears of it at once (its grant is at a rate the downstream
-- refuses, and its limit is full for now): "<cut_at> <reporter>", so the reporter ignores its own. take_tokens.lua
-- replies with cut_at too, so a process tells a cut its grant already knew from a newer one.
if ARGV[10] and ARGV[10] ~= '' then
  redis.call('PUBLISH', ARGV[10], string.format('%.0f', now) .. ' ' .. ARGV[11])
end

-- Keep the state until the probe is back at allowed; never shorten the life take_tokens gave meta (it also
-- holds the running sum of a live log).
local back_s = (plateau + (math.max(0, allowed / ceiling - 1) / probe) ^ (1 / 3)) * period / 1000000
local ttl_ms = math.max(math.ceil(back_s * 1000) + 1000, redis.call('PTTL', KEYS[2]))
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('PEXPIRE', KEYS[3], math.ceil(2 * period / 1000) + 1000)
return {tostring(effective), tostring(ceiling), accepted == nil and '' or tostring(accepted), now}
