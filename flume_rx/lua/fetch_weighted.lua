-- fetch_weighted(KEYS[4i-3..4i]=(queue, inflight of the consumer, paused flag, consumers) of queue i = 1..k,
--                ARGV[1]=consumer id, ARGV[2]=n, ARGV[2+i]=quota of queue i) -> {count_1..count_k, payload...}
-- One fetch for a pipeline that serves several queues (all in one cluster slot: see Keys.of, "group/name").
-- First each queue gives up to its quota (the caller's weighted share of n); then whatever is left of n is
-- taken from the queues in KEYS order (highest priority first), so an idle queue never wastes the pipeline's
-- demand. Paused queues give nothing. Payloads come back grouped by queue, count_i of them from queue i.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local consumer = ARGV[1]
local n = tonumber(ARGV[2])
local k = #KEYS / 4
local taken = {}
local out = {}
local total = 0
local open = {}
for i = 1, k do
  redis.call('ZADD', KEYS[4 * i], now_ms, consumer)
  open[i] = redis.call('EXISTS', KEYS[4 * i - 1]) == 0
  taken[i] = {}
end
local function take(i, most)
  local got = 0
  while got < most and total < n do
    local payload = redis.call('RPOPLPUSH', KEYS[4 * i - 3], KEYS[4 * i - 2])
    if not payload then
      open[i] = false
      break
    end
    local list = taken[i]
    list[#list + 1] = payload
    got = got + 1
    total = total + 1
  end
end
for i = 1, k do
  if open[i] then
    take(i, tonumber(ARGV[2 + i]))
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
  out[i] = #taken[i]
end
for i = 1, k do
  for _, payload in ipairs(taken[i]) do
    out[#out + 1] = payload
  end
end
return out
