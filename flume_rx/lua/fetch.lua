-- fetch(KEYS[1]=queue, KEYS[2]=inflight of the consumer, KEYS[3]=paused flag, KEYS[4]=consumers,
--       ARGV[1]=consumer id, ARGV[2]=n) -> {paused (0/1), payload...}
-- Moves up to n payloads from the fetch end (right) of the queue onto the consumer's in-flight list, and
-- records the consumer as alive (its heartbeat) so that orphan recovery can find its in-flight list.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {1}
end
local out = {0}
local n = tonumber(ARGV[2])
for _ = 1, n do
  local payload = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  if not payload then
    break
  end
  out[#out + 1] = payload
end
return out
