-- cancel(KEYS[1]=queue, KEYS[2]=scheduled, KEYS[3]=retry, KEYS[4]=the job's record, ARGV[1]=payload,
--        ARGV[2]=how long the record is kept (ms), KEYS[5..]=keys of the job's workflow hand-offs,
--        ARGV[3]=msgpack array of those hand-offs, as settle takes them, or "")
--        -> 1 if the job was taken off, 0 if it was not waiting
-- Takes a waiting job (queued, scheduled or waiting to retry) off and records it as cancelled, in one step,
-- so `job ID` never sees it gone without a reason. A job a worker has fetched is not in any of the three.
-- A workflow job hands on in the same step, as it would had it gone dead: a group member's outcome (so the
-- callback still runs, learning the member was cancelled), a chain's later steps recorded as stopped.
local flow = nil
if ARGV[3] and ARGV[3] ~= '' then
  flow = cmsgpack.unpack(ARGV[3])
  local bad = handoffs_refused(flow)
  if bad then
    return redis.error_reply(bad)
  end
end
local removed = redis.call('LREM', KEYS[1], 0, ARGV[1])
  + redis.call('ZREM', KEYS[2], ARGV[1])
  + redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 0 then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[4], 'state', 'cancelled', 'at_ms', now_ms, 'job', ARGV[1])
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]))
redis.call('PUBLISH', KEYS[4], 'cancelled')
if flow then
  for j = 1, #flow, 5 do
    hand_off(flow, j, now_ms)
  end
end
return 1
