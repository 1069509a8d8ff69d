-- enqueue(KEYS[1]=queue, KEYS[2]=scheduled, ARGV[1]=mode "now"|"at"|"in", ARGV[2..]=payloads when "now",
--         else (due, payload) pairs: due in unix ms for "at", in ms from Redis TIME for "in") -> count added
-- Payloads go onto the enqueue end (left) of the queue list, so fetch (right) sees them in FIFO order.
local mode = ARGV[1]
local n = #ARGV
if mode == 'now' then
  -- unpack() is limited by the Lua C stack, so push in slices.
  local step = 500
  for i = 2, n, step do
    local last = math.min(i + step - 1, n)
    redis.call('LPUSH', KEYS[1], unpack(ARGV, i, last))
  end
  return n - 1
end
local offset = 0
if mode == 'in' then
  local t = redis.call('TIME')
  offset = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local count = 0
for i = 2, n, 2 do
  redis.call('ZADD', KEYS[2], tonumber(ARGV[i]) + offset, ARGV[i + 1])
  count = count + 1
end
return count
