-- fetch_weighted(KEYS[6i-5..6i]=(queue, inflight of the consumer, paused flag, consumers, dead, stats) of queue
--                i = 1..k, ARGV[1]=consumer id, ARGV[2]=n, ARGV[3]=max_payload_bytes, ARGV[4]=dead_max,
--                ARGV[5]=dead_ttl_ms, ARGV[4+2i]=quota of queue i, ARGV[5+2i]=name of queue i)
--                -> {count_1..count_k, oversized count, payload...}
-- One fetch for a pipeline that serves several queues (all in one cluster slot: see Keys.of, "group/name").
-- First each queue gives up to its quota (the caller's weighted share of n); then whatever is left of n is
-- taken from the queues in KEYS order (highest priority first), so an idle queue never wastes the pipeline's
-- demand. Paused queues give nothing. Payloads come back grouped by queue, count_i of them from queue i;
-- payloads over max_payload_bytes go to their queue's dead letters instead (see _oversized.lua).
-- Every write that may grow memory comes after a pop or a ZREM: under maxmemory (noeviction) Redis refuses a
-- script whose first write is one that may grow memory, and fetching is how a full Redis is drained.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local consumer = ARGV[1]
local n = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local k = #KEYS / 6
local taken = {}
local out = {}
local total = 0
local oversized = 0
local open = {}
for i = 1, k do
  open[i] = redis.call('EXISTS', KEYS[6 * i - 3]) == 0
  taken[i] = {}
end
local function take(i, most)
  while most > 0 and total < n do
    local popped = redis.call('RPOP', KEYS[6 * i - 5], math.min(most, n - total))
    if not popped then
      open[i] = false
      return
    end
    local kept, dropped = drop_oversized(popped, max_bytes, ARGV[5 + 2 * i], now_ms, KEYS[6 * i - 1], KEYS[6 * i],
      tonumber(ARGV[4]), tonumber(ARGV[5]))
    push_all(KEYS[6 * i - 4], kept)
    local list = taken[i]
    for _, payload in ipairs(kept) do
      list[#list + 1] = payload
    end
    oversized = oversized + dropped
    most = most - #kept
    total = total + #kept
  end
end
for i = 1, k do
  if open[i] then
    take(i, tonumber(ARGV[4 + 2 * i]))
  end
end
for i = 1, k do
  if total >= n then
    break
  end
  if open[i] then
    take(i, n)
  end
end
for i = 1, k do
  redis.call('ZREM', KEYS[6 * i - 2], consumer)
  redis.call('ZADD', KEYS[6 * i - 2], now_ms, consumer)
  out[i] = #taken[i]
end
out[k + 1] = oversized
for i = 1, k do
  for _, payload in ipairs(taken[i]) do
    out[#out + 1] = payload
  end
end
return out
