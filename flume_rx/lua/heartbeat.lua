-- heartbeat(KEYS[1..n]=consumers zsets, ARGV[1]=consumer id) -> now in unix ms
-- Records the consumer as alive at Redis TIME in each queue it serves. The old beat is removed before the
-- new one is added: under maxmemory (noeviction) Redis refuses a script whose first write is one that may grow
-- memory (ZADD), not one that starts with another write (ZREM); and a worker on a full Redis must keep its
-- beat, or others would take its jobs for orphans.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
  redis.call('ZADD', key, now_ms, ARGV[1])
end
return now_ms
