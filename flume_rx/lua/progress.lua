-- progress(KEYS[1]=the job's record, KEYS[2]=the queue's recent progress reports (zset of job ids),
--          ARGV[1]=job id, ARGV[2]=fraction, ARGV[3]=message, ARGV[4]=how long the record is kept (ms))
--          -> 1
-- A worker's progress report: kept in the job's record for Flume.job, and the job's id noted with the time
-- of its report so `stats --watch` can list the jobs reporting now without scanning in-flight lists. The
-- note keeps a minute of reports at the most.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now_ms - 60000))
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'progress_message', ARGV[3], 'progress_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
return 1
