-- take_tokens(KEYS[1]=log, KEYS[2]=meta, ARGV[1]=allowed, ARGV[2]=period_ms, ARGV[3]=hold_ms, ARGV[4]=want,
--             ARGV[5]=min_tokens, ARGV[6]=adaptive (0/1), ARGV[7]=margin, ARGV[8]=probe,
--             ARGV[9]=burst (0: no pacing), ARGV[10]=headroom, ARGV[11]=slice_tokens (0: one grant),
--             ARGV[12..] give backs, five each: seq, g_us, tokens its entry counts now (granted less what went
--             back before) of an earlier grant, how many of them will never start, and within how many us
--             after g every one of them that started did ('' when not known))
--   -> {tokens, delay_us, hold_us, effective allowed (string), g_us, seq, cut_at_us (of the latest refusal the
--       adaptive rate follows, 0 for none), then per later slice: tokens, delay_us, g_us, seq}
-- An exact sliding-window limit. Each grant is recorded at its start time g (unix us, Redis TIME), handed out
-- in non-decreasing g, and counted until g + hold + period: the log is a zset of "seq:tokens" scored g + hold,
-- and an entry stops counting once its score is <= g' - period for the grant g' being decided. meta keeps the
-- running sum of the counted tokens, the last g, a sequence number (grants so far), how many grants were
-- reservations (waits) and, when adaptive, the ceiling and time of the last refusal (penalize.lua sets them;
-- the effective allowed is the cubic probe of operators/_adaptive.py, computed by the same formula here).
-- When fewer than min(want, min_tokens) tokens are free now, the grant is a reservation at the earliest g at
-- which that many are free; so a grant always has at least one token.
-- With slice_tokens S > 0, the take is answered with at most max(S, min_tokens) tokens a grant, in up to
-- MOST_SLICES grants, each starting at least a hold after the one before (a remainder smaller than min_tokens
-- is not granted, nor any later slice when a slice's tokens pace out in less than a hold): each is recorded
-- as a grant of its own, exactly as if taken by a call of its own at its g.
-- With a burst B > 0, grants are also paced (GCRA, one token every period/allowed, at most B at once), so the
-- window fills smoothly instead of in one burst a period: pacing only moves g later, which the window allows.
-- A take may give back tokens of the caller's earlier grants that will never start (they lapsed): each such
-- entry then counts only the rest, and pacing gets them back. Callers give back only once they can no longer
-- start them, so every grant decided later sees at least the tokens that really start (DEVELOPERS.md, "The token
-- window"). A take may also say that the starts of such a grant all came within s of g (s < hold): its entry is
-- then counted until g + s + period, not g + hold + period, since no start of it lies later. A grant's entry
-- is shortened once (while scored g + hold). An entry expired already, or not matching seq, g and tokens, is
-- left alone.
local MOST_SLICES = 3  -- operators/_throttle.py MOST_SLICES
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = tonumber(ARGV[1])
local period = math.floor(tonumber(ARGV[2]) * 1000)
local hold = math.floor(tonumber(ARGV[3]) * 1000)
local want = tonumber(ARGV[4])
local min_tokens = tonumber(ARGV[5])
local adaptive = ARGV[6] == '1'
local margin = tonumber(ARGV[7])
local probe = tonumber(ARGV[8])
local burst = tonumber(ARGV[9]) or 0
local headroom = tonumber(ARGV[10])  -- nil: no cap (AdaptiveTuning.headroom None)

local meta = redis.call('HMGET', KEYS[2], 'sum', 'last_g', 'seq', 'ceiling', 'cut_at', 'tat')
local sum = window_sum(KEYS[1], meta[1])
local given_back = 0
-- g came back to the caller in whole microseconds (Redis truncates a reply's number), and a paced g may have a
-- fraction: the entry is the grant's if its score lies within the microsecond after back_g + hold, or after
-- back_g once shortened. Only while it still counts for the next grant (its score above max(now, last_g) -
-- period), as InProcessWindow does: once it no longer counts, there is nothing to give back or shorten, pacing
-- included.
local counts_from = math.max(now, tonumber(meta[2]) or 0) - period
for i = 12, #ARGV - 4, 5 do
  local back_seq, back_g, back_tokens = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local unused, within = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local member = back_seq .. ':' .. back_tokens
  local score = tonumber(redis.call('ZSCORE', KEYS[1], member))
  if score and score >= back_g and score < back_g + hold + 1 and score > counts_from then
    local back = math.min(unused, back_tokens)
    local kept_score = score
    if within and score >= back_g + hold then
      -- The entry's own g (score - hold) keeps a paced start's fraction.
      kept_score = score - hold + math.max(0, math.min(hold, within))
    end
    if back >= 1 or kept_score < score then
      -- The removal first: it never grows memory, so a full Redis still runs the script (see _window.lua).
      redis.call('ZREM', KEYS[1], member)
      if back < back_tokens then
        redis.call('ZADD', KEYS[1], kept_score, back_seq .. ':' .. (back_tokens - back))
      end
    end
    if back >= 1 then
      sum = sum - back
      given_back = given_back + back
    end
  end
end
if given_back >= 1 then
  redis.call('HINCRBY', KEYS[2], 'returned', given_back)
end
local last_g = tonumber(meta[2]) or 0
local seq = tonumber(meta[3]) or 0
-- probed_rate of operators/_adaptive.py: a cubic from a margin below the ceiling, within [1, allowed], and
-- while the window is not used no more than the ceiling or `headroom` above the tokens in use: those still
-- counted plus those this take asks for (a full window refuses them, and they are use all the same).
local effective = allowed
local ceiling = tonumber(meta[4])
local cut_at = tonumber(meta[5])
local plateau = (margin / probe) ^ (1 / 3)
if adaptive and ceiling and cut_at and not headroom then
  local offset = math.max(0, now - cut_at) / 1000000 / (period / 1000000) - plateau
  effective = math.max(1, math.min(allowed, ceiling * (1 + probe * offset * offset * offset)))
elseif adaptive and ceiling and cut_at then
  local used = math.min(want, allowed)
  local counted = string.format('(%.0f', math.max(now, last_g) - period)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], counted, '+inf')) do
    used = used + window_tokens_of(member)
  end
  local offset = math.max(0, now - cut_at) / 1000000 / (period / 1000000) - plateau
  effective = math.min(allowed, ceiling * (1 + probe * offset * offset * offset))
  effective = math.max(1, math.min(effective, math.max(ceiling, used * (1 + headroom))))
end
local cap = math.max(1, math.floor(effective))
want = math.max(1, math.min(want, cap))
min_tokens = math.max(1, math.min(min_tokens, want))

local slice_tokens = tonumber(ARGV[11]) or 0
-- Pacing: the theoretical arrival time of the next token, given back what was given back above.
local interval = period / cap
local tat = (tonumber(meta[6]) or 0) - given_back * interval
local waits = 0

-- One grant of up to `size` tokens starting no earlier than `from`: recorded in the log, and its g and tokens.
local function grant_one(from, size, least)
  local g
  g, sum = window_walk(KEYS[1], sum, from, cap, least, period)
  local tokens = math.min(size, cap - sum)
  if tokens < 1 then
    tokens = 1
  end
  if burst > 0 then
    local most = math.max(burst, least)
    if tokens > most then
      tokens = most
    end
    -- Paced at allowed per period: a grant shortened to its starts (see above) lets the window sustain more
    -- than allowed per (period + hold), and the window itself still reserves a later g when it is full.
    g = math.max(g, tat + (tokens - most) * interval)
    tat = math.max(tat, g) + tokens * interval
  end
  seq = seq + 1
  redis.call('ZADD', KEYS[1], g + hold, seq .. ':' .. tokens)
  sum = sum + tokens
  if g > now then
    waits = waits + 1
  end
  return g, tokens
end

-- A slice is never smaller than the take's least: its first item may need that many.
local per_slice = want
if slice_tokens > 0 then
  per_slice = math.max(slice_tokens, min_tokens)
end
local g, tokens = grant_one(math.max(now, last_g), math.min(want, per_slice), min_tokens)
local reply = {tokens, g - now, hold, tostring(effective), g, seq, (adaptive and cut_at) or 0}
local left = want - tokens
local slices = 1
-- Later slices only when a slice's tokens take at least a hold to pace out: grants start in order, so a slice a
-- hold after the one before holds every other caller's grants back that long, and smaller slices would hand out
-- the window's time faster than its tokens.
local keeps_pace = per_slice * period / cap >= hold
while slice_tokens > 0 and keeps_pace and left > 0 and slices < MOST_SLICES do
  local size = math.min(left, per_slice)
  if size < min_tokens then
    break  -- a remainder smaller than a take would ask for: not worth reserving a hold for
  end
  local later_g, later_tokens = grant_one(g + hold, size, min_tokens)
  g = later_g
  left = left - later_tokens
  slices = slices + 1
  table.insert(reply, later_tokens)
  table.insert(reply, later_g - now)
  table.insert(reply, later_g)
  table.insert(reply, seq)
end

if burst > 0 then
  redis.call('HSET', KEYS[2], 'tat', tat)
end
-- allowed and rate are for readers (stats, the dashboard): the window's limit and its rate at this grant.
redis.call('HSET', KEYS[2], 'sum', sum, 'last_g', g, 'seq', seq, 'allowed', allowed, 'rate', tostring(effective))
if waits > 0 then
  -- Reservations: the caller waits. Counted for the operators' views (flume-rx demo, stats).
  redis.call('HINCRBY', KEYS[2], 'waits', waits)
end

-- Quiet windows vanish; a lowered adaptive rate is kept until the probe is back at allowed (recovery_s of
-- operators/_adaptive.py), and never shorter than penalize.lua made it.
local ttl_ms = math.ceil((g + hold + period - now) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
local meta_ttl_ms = ttl_ms
if adaptive and ceiling and cut_at then
  local back_s = (plateau + (math.max(0, allowed / ceiling - 1) / probe) ^ (1 / 3)) * period / 1000000
  meta_ttl_ms = math.max(ttl_ms, math.ceil((cut_at - now) / 1000 + back_s * 1000) + 1000)
end
redis.call('PEXPIRE', KEYS[2], math.max(meta_ttl_ms, redis.call('PTTL', KEYS[2])))
return reply
