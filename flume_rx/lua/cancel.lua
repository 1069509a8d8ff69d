-- cancel(KEYS[1]=queue, KEYS[2]=scheduled, KEYS[3]=retry, KEYS[4]=the job's record, ARGV[1]=payload,
--        ARGV[2]=how long the record is kept (ms)) -> 1 if the job was taken off, 0 if it was not waiting
-- Takes a waiting job (queued, scheduled or waiting to retry) off and records it as cancelled, in one step,
-- so `job ID` never sees it gone without a reason. A job a worker has fetched is not in any of the three.
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
return 1
