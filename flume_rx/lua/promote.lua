-- promote(KEYS[1]=scheduled, KEYS[2]=retry, KEYS[3]=queue, ARGV[1]=limit) -> count moved
-- Moves members of scheduled and retry whose due time (score, unix ms) has come onto the enqueue end of the
-- queue, earliest first, at most limit per call. Atomic, so concurrent promoters never move a job twice.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local moved = 0
for k = 1, 2 do
  if moved >= limit then
    break
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now_ms, 'LIMIT', 0, limit - moved)
  for _, payload in ipairs(due) do
    redis.call('ZREM', KEYS[k], payload)
    redis.call('LPUSH', KEYS[3], payload)
  end
  moved = moved + #due
end
return moved
