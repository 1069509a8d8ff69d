-- fetch(KEYS[1]=queue, KEYS[2]=inflight of the consumer, KEYS[3]=paused flag, KEYS[4]=consumers,
--       KEYS[5]=dead, KEYS[6]=stats, KEYS[7]=arrivals of the consumer,
--       ARGV[1]=consumer id, ARGV[2]=n, ARGV[3]=max_payload_bytes, ARGV[4]=dead_max, ARGV[5]=dead_ttl_ms,
--       ARGV[6]=queue name) -> {paused (0/1), oversized count, payload...}
-- Moves up to n payloads onto the consumer's in-flight list and returns them: first what the consumer's
-- blocking wait moved into its arrivals list, then from the fetch end (right) of the queue. Records the
-- consumer as alive (its heartbeat), so that orphan recovery can find its in-flight list. Payloads over
-- max_payload_bytes go to the dead letters instead (see _oversized.lua), counted in the reply.
-- Its first write is a pop: under maxmemory (noeviction) Redis refuses a script whose first write is one that
-- may grow memory (RPOPLPUSH, ZADD), while one that starts with another write runs to its end; and fetching is
-- how a full Redis is drained.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local out = {0, 0}
local function take(from, count)
  local popped = redis.call('RPOP', from, count)
  if not popped then
    return 0
  end
  local kept, dropped = drop_oversized(popped, max_bytes, ARGV[6], now_ms, KEYS[5], KEYS[6],
    tonumber(ARGV[4]), tonumber(ARGV[5]))
  push_all(KEYS[2], kept)
  for _, payload in ipairs(kept) do
    out[#out + 1] = payload
  end
  out[2] = out[2] + dropped
  return #popped
end
take(KEYS[7], n)
if redis.call('EXISTS', KEYS[3]) == 1 then
  out[1] = 1
else
  local wanted = n - (#out - 2)
  while wanted > 0 do
    local got = take(KEYS[1], wanted)
    if got == 0 then
      break
    end
    wanted = n - (#out - 2)
  end
end
redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
return out
