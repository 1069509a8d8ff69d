-- recover(KEYS[1]=consumers, KEYS[2]=queue, KEYS[3]=inflight of the consumer, ARGV[1]=consumer id,
--         ARGV[2]=timeout_ms) -> count moved back, or -1 when the consumer is alive after all
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
local moved = 0
while redis.call('LMOVE', KEYS[3], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
