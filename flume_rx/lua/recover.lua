-- recover(KEYS[1]=consumers, KEYS[2]=queue, KEYS[3]=inflight of the consumer, KEYS[4]=arrivals of the consumer
--         (optional), ARGV[1]=consumer id, ARGV[2]=timeout_ms) -> count moved back, or -1 when the consumer is
--         alive after all
-- Re-checks, atomically and by Redis TIME, that the consumer's last heartbeat is at least timeout_ms old, then
-- moves its whole in-flight list back onto the fetch end of the queue (oldest fetched comes out first) and
-- forgets the consumer.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat then
  return 0
end
if now_ms - tonumber(beat) < tonumber(ARGV[2]) then
  return -1
end
-- Popped, then pushed: a full Redis (maxmemory, noeviction) refuses a script whose first write may grow memory.
local function give_back(from)
  local moved = 0
  while true do
    local popped = redis.call('LPOP', from, 1000)
    if not popped then
      return moved
    end
    redis.call('RPUSH', KEYS[2], unpack(popped))
    moved = moved + #popped
  end
end
local moved = give_back(KEYS[3])
if KEYS[4] then
  moved = moved + give_back(KEYS[4])
end
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
