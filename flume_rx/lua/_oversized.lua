-- _oversized: shared by fetch and fetch_weighted, which begin with it (Redis scripts cannot include files).
-- A payload longer than max_payload_bytes is never handed to a worker, which would have to read all of it to
-- refuse it: it goes to the dead letters here, as a job record whose error says why and whose args keep the
-- payload's head, as a worker keeps the head of any payload it cannot decode.
local function msgpack_bin(s)
  local n = #s
  if n < 256 then
    return string.char(0xc4, n) .. s
  elseif n < 65536 then
    return string.char(0xc5, math.floor(n / 256), n % 256) .. s
  end
  return string.char(0xc6, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. s
end

-- Returns the dead record of an oversized payload (format version 1: id, queue, worker, args, attempt,
-- created_at, enqueued_at, cost, error), built by hand because cmsgpack writes strings, not bytes.
local function oversized_record(payload, max_bytes, queue, now_ms)
  local head = string.sub(payload, 1, math.max(0, max_bytes - 4096))
  local id = 'undecodable-' .. string.sub(redis.sha1hex(#payload .. ':' .. head), 1, 16)
  local message = 'payload of ' .. #payload .. ' bytes exceeds the limit of ' .. max_bytes
  local now_s = now_ms / 1000
  return string.char(0x9a) .. cmsgpack.pack(1, id, queue, '') .. string.char(0x91) .. msgpack_bin(head)
    .. cmsgpack.pack(0, now_s, now_s, 0, {'DecodeError', message, ''})
end

-- Dead-letters the oversized payloads among `popped` (already popped, so this write comes after a free) and
-- returns the others, in order. Bounds the dead letters as settle does and counts them in the stats hash.
local function drop_oversized(popped, max_bytes, queue, now_ms, dead_key, stats_key, dead_max, dead_ttl_ms)
  local kept, dropped = {}, 0
  for _, payload in ipairs(popped) do
    if #payload > max_bytes then
      redis.call('ZADD', dead_key, now_ms, oversized_record(payload, max_bytes, queue, now_ms))
      dropped = dropped + 1
    else
      kept[#kept + 1] = payload
    end
  end
  if dropped > 0 then
    redis.call('HINCRBY', stats_key, 'failed', dropped)
    redis.call('HINCRBY', stats_key, 'dead', dropped)
    redis.call('ZREMRANGEBYSCORE', dead_key, '-inf', '(' .. (now_ms - dead_ttl_ms))
    redis.call('ZREMRANGEBYRANK', dead_key, 0, -(dead_max + 1))
  end
  return kept, dropped
end

-- Pushes payloads onto a list in order (as one LPUSH each would), in calls of at most 1000 arguments.
local function push_all(key, payloads)
  for i = 1, #payloads, 1000 do
    redis.call('LPUSH', key, unpack(payloads, i, math.min(i + 999, #payloads)))
  end
end
