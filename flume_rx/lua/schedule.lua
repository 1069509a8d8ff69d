-- schedule(KEYS[1]=scheduled, ARGV[1]=mode "at"|"in", ARGV[2..]=(due, payload) pairs: due in unix ms for
--          "at", in ms from Redis TIME for "in") -> count added
-- A script so that "in" counts from Redis's clock, read in the same call as the writes. (Jobs due now are a
-- plain LPUSH: see commands._ops_enqueue.)
local offset = 0
if ARGV[1] == 'in' then
  local t = redis.call('TIME')
  offset = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local count = 0
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[i]) + offset, ARGV[i + 1])
  count = count + 1
end
return count
