-- cancel(KEYS[1]=queue, KEYS[2]=scheduled, KEYS[3]=retry, KEYS[4]=the job's record, ARGV[1]=payload,
--        ARGV[2]=how long the record is kept (ms), KEYS[5..]=keys of the job's workflow hand-offs,
--        ARGV[3]=msgpack array of those hand-offs, as settle takes them, or "",
--        ARGV[4]=with ARGV[1] "": the job record of a workflow job to come)
--        -> 1 if the job was taken off, 0 if it was not waiting
-- With no payload, the job is a workflow job to come (a later chain step, a group's callback): it is
-- cancelled while its record still says it is to come, and the hand-off that would enqueue it then skips it.
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
local job = ARGV[1]
if job == '' then
  if redis.call('HEXISTS', KEYS[4], 'chained') == 0 or redis.call('HEXISTS', KEYS[4], 'state') == 1 then
    return 0
  end
  job = ARGV[4]
else
  local removed = redis.call('LREM', KEYS[1], 0, ARGV[1])
    + redis.call('ZREM', KEYS[2], ARGV[1])
    + redis.call('ZREM', KEYS[3], ARGV[1])
  if removed == 0 then
    return 0
  end
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[4], 'state', 'cancelled', 'at_ms', now_ms, 'job', job)
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[2]))
redis.call('PUBLISH', KEYS[4], 'cancelled')
if flow then
  for j = 1, #flow, 5 do
    hand_off(flow, j, now_ms)
  end
end
return 1
