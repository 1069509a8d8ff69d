-- enqueue_unique(KEYS[1]=queue, KEYS[2]=scheduled, KEYS[3..]=unique keys, ARGV[1]=mode "now"|"at"|"in",
--                ARGV[2]=unique_for_ms, then per job ARGV[i..i+3]=(index of its unique key in KEYS or 0,
--                job id, payload, due: unix ms for "at", ms from Redis TIME for "in", 0 for "now"))
--   -> per job, in order: {1, its id} when added, {0, holder's id} when another job holds its key
-- Adds each job only if no job holds its unique key: the key is claimed with SET NX in the same step as the
-- push, so two producers racing with the same key cannot both add a job, and two jobs of one bulk call with
-- the same key add only the first. A job with index 0 has no key and is always added. The claim lives
-- unique_for_ms from the job's due time; settle releases it earlier (when the job starts, or is acked or
-- dead, as the job's unique_until says).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local unique_for_ms = tonumber(ARGV[2])
local reply = {}
for i = 3, #ARGV, 4 do
  local key_index, job_id, payload = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local due_ms = now_ms
  if mode == 'at' then
    due_ms = tonumber(ARGV[i + 3])
  elseif mode == 'in' then
    due_ms = now_ms + tonumber(ARGV[i + 3])
  end
  local holder = nil
  if key_index > 0 then
    local ttl_ms = math.max(0, due_ms - now_ms) + unique_for_ms
    if not redis.call('SET', KEYS[key_index], job_id, 'NX', 'PX', ttl_ms) then
      holder = redis.call('GET', KEYS[key_index])
    end
  end
  if holder then
    reply[#reply + 1] = 0
    reply[#reply + 1] = holder
  else
    if mode == 'now' then
      redis.call('LPUSH', KEYS[1], payload)
    else
      redis.call('ZADD', KEYS[2], due_ms, payload)
    end
    reply[#reply + 1] = 1
    reply[#reply + 1] = job_id
  end
end
return reply
