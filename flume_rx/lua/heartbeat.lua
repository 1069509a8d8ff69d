-- heartbeat(KEYS[1..n]=consumers zsets, ARGV[1]=consumer id) -> now in unix ms
-- Records the consumer as alive at Redis TIME in each queue it serves.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now_ms, ARGV[1])
end
return now_ms
