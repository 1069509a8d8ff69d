-- requeue_all(KEYS[1]=consumers, KEYS[2]=queue, KEYS[3]=inflight of the consumer, KEYS[4]=arrivals of the
--             consumer (optional), ARGV[1]=consumer id, ARGV[2..]=payloads, or none for all) -> count moved back
-- A consumer giving jobs back at a graceful stop: they return to the fetch end of the queue, unspent, and the
-- consumer leaves the consumers zset once its in-flight list is empty.
local moved = 0
-- Popped, then pushed: a full Redis (maxmemory, noeviction) refuses a script whose first write may grow memory.
local function give_back(from)
  while true do
    local popped = redis.call('LPOP', from, 1000)
    if not popped then
      return
    end
    redis.call('RPUSH', KEYS[2], unpack(popped))
    moved = moved + #popped
  end
end
if #ARGV == 1 then
  give_back(KEYS[3])
  if KEYS[4] then
    give_back(KEYS[4])
  end
else
  for i = 2, #ARGV do
    if redis.call('LREM', KEYS[3], -1, ARGV[i]) > 0 then
      redis.call('RPUSH', KEYS[2], ARGV[i])
      moved = moved + 1
    end
  end
end
if redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return moved
