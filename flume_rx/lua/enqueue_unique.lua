-- enqueue_unique(KEYS[1]=queue, KEYS[2]=scheduled, KEYS[3]=unique key, ARGV[1]=mode "now"|"at"|"in",
--                ARGV[2]=job id, ARGV[3]=payload, ARGV[4]=unique_for_ms, ARGV[5]=due (unix ms for "at", ms from
--                Redis TIME for "in"; absent for "now")) -> {1, job id} when added, {0, holder's id} when not
-- Adds the job only if no job holds the unique key: the key is claimed with SET NX in the same step as the
-- push, so two producers racing with the same key cannot both add a job. The claim lives unique_for_ms from
-- the job's due time, and settle releases it earlier when the job is acked or dead.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local due_ms = now_ms
if mode == 'at' then
  due_ms = tonumber(ARGV[5])
elseif mode == 'in' then
  due_ms = now_ms + tonumber(ARGV[5])
end
local ttl_ms = math.max(1, due_ms - now_ms) + tonumber(ARGV[4])
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ttl_ms) then
  return {0, redis.call('GET', KEYS[3])}
end
if mode == 'now' then
  redis.call('LPUSH', KEYS[1], ARGV[3])
else
  redis.call('ZADD', KEYS[2], due_ms, ARGV[3])
end
return {1, ARGV[2]}
