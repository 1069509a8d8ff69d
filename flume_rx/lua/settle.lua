-- settle(KEYS[1]=inflight of the consumer, KEYS[2]=queue, KEYS[3]=retry, KEYS[4]=dead, KEYS[5]=stats,
--        KEYS[6]=per-second rate ring, KEYS[7]=per-minute rate ring, KEYS[8]=latency samples list,
--        ARGV[1]=dead_max, ARGV[2]=dead_ttl_ms,
--        KEYS[9..]=unique keys held by settled jobs, and the records of kept outcomes,
--        ARGV[3]=msgpack array of (action, payload, new_payload or "", delay_ms, unique key index into KEYS
--        or 0, job id) per outcome, flattened,
--        ARGV[4]=msgpack array of enqueue-to-settle latency samples (ms, as strings) or "",
--        ARGV[5]=how many samples the list keeps,
--        ARGV[6]=msgpack array of (outcome number, record key index into KEYS, result, keep_ms, state) for
--        the jobs whose outcome is kept, flattened, or "",
--        ARGV[7]=msgpack array of workflow hand-offs (outcome number, "push" or "join", key index into KEYS,
--        data, member) flattened, or "") -> count of stale outcomes. ("stop", record index, job, keep_ms): a
--        later step of a chain that stopped is recorded as cancelled, and its waiters told.
-- A hand-off happens only if its outcome took the job out of the in-flight list, which happens once, so a
-- kill -9 anywhere neither loses nor doubles it. What each kind does: lua/_handoff.lua.
-- A kept outcome is written in this same step: state "done" records the result, "dead" and "cancelled"
-- (an aborted job) the job's record; the record lives keep_ms and its name is also the channel on which
-- the outcome is announced, so a waiting Flume.result wakes without polling.
-- The latency samples ride in this call rather than in an LPUSH and an LTRIM of their own per settle.
-- The outcomes travel as one msgpack blob: as separate arguments, the client spent more time encoding a
-- batch of hundreds of them than running the jobs.
-- action is "ack", "retry" (into retry at now+delay_ms), "dead" (into the dead letters, bounded by count and
-- age), "requeue" (back onto the fetch end of the queue, costing no retry) or "release" (a job of
-- unique_until "start" has started: only its unique key is released, the job stays in flight). An outcome whose payload is no
-- longer in the in-flight list (orphan recovery gave it back meanwhile) moves nothing: the recovered copy is
-- the live one. It is counted in the reply as stale. An outcome with a unique key index releases that key
-- (ack, dead and release do; retry and requeue keep it), if the job still holds it (the key's value is the holder's job id: a claim that expired and was taken by a newer job
-- stays with that job).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = 0
local processed, failed, dead, requeued = 0, 0, 0, 0
local outcomes = cmsgpack.unpack(ARGV[3])
-- A key this call writes that holds another type (bad data) would fail the call half-way, after jobs left the
-- in-flight list, and Redis does not undo a script's writes: so the keys of unique claims, kept outcomes and
-- hand-offs are checked first, and the call is refused before it writes anything.
local bad = nil
for i = 5, #outcomes, 6 do
  local unique = tonumber(outcomes[i])
  if unique > 0 then bad = bad or wrong_type(KEYS[unique], 'string') end
end
if ARGV[6] and ARGV[6] ~= '' then
  local kept = cmsgpack.unpack(ARGV[6])
  for j = 2, #kept, 5 do bad = bad or wrong_type(KEYS[tonumber(kept[j])], 'hash') end
end
if ARGV[7] and ARGV[7] ~= '' then
  bad = bad or handoffs_refused(cmsgpack.unpack(ARGV[7]))
end
if bad then
  return redis.error_reply(bad)
end
local removed_of = nil
if (ARGV[6] and ARGV[6] ~= '') or (ARGV[7] and ARGV[7] ~= '') then
  removed_of = {}
end
for i = 1, #outcomes, 6 do
  local action, payload, new_payload = outcomes[i], outcomes[i + 1], outcomes[i + 2]
  local unique = tonumber(outcomes[i + 4])
  if new_payload == '' then
    new_payload = payload
  end
  local removed
  if action == 'release' then
    -- A job recovered meanwhile is queued again and keeps its key.
    removed = redis.call('LPOS', KEYS[1], payload) and 1 or 0
  else
    removed = redis.call('LREM', KEYS[1], -1, payload)
  end
  if removed_of then
    removed_of[(i + 5) / 6] = removed
  end
  if removed == 0 then
    stale = stale + 1
  elseif action == 'ack' then
    processed = processed + 1
  elseif action == 'retry' then
    redis.call('ZADD', KEYS[3], now_ms + tonumber(outcomes[i + 3]), new_payload)
    failed = failed + 1
  elseif action == 'dead' then
    redis.call('ZADD', KEYS[4], now_ms, new_payload)
    failed = failed + 1
    dead = dead + 1
  elseif action == 'requeue' then
    redis.call('RPUSH', KEYS[2], new_payload)
    requeued = requeued + 1
  elseif action ~= 'release' then
    return redis.error_reply('settle: unknown action ' .. tostring(action))
  end
  if unique > 0 and removed > 0 and action ~= 'retry' and action ~= 'requeue'
      and redis.call('GET', KEYS[unique]) == outcomes[i + 5] then
    redis.call('DEL', KEYS[unique])
  end
end
if ARGV[6] and ARGV[6] ~= '' then
  local kept = cmsgpack.unpack(ARGV[6])
  for j = 1, #kept, 5 do
    local n = kept[j]
    local at = (n - 1) * 6 + 1
    local state = kept[j + 4]
    if removed_of[n] > 0 then
      local record = KEYS[tonumber(kept[j + 1])]
      if state == 'done' then
        redis.call('HSET', record, 'state', 'done', 'at_ms', now_ms, 'result', kept[j + 2])
      else
        local job = outcomes[at + 2]
        if job == '' then job = outcomes[at + 1] end
        redis.call('HSET', record, 'state', state, 'at_ms', now_ms, 'job', job)
      end
      redis.call('PEXPIRE', record, tonumber(kept[j + 3]))
      redis.call('PUBLISH', record, state)
    end
  end
end
if ARGV[7] and ARGV[7] ~= '' then
  local flow = cmsgpack.unpack(ARGV[7])
  for j = 1, #flow, 5 do
    if removed_of[flow[j]] > 0 then
      hand_off(flow, j, now_ms)
    end
  end
end
if processed > 0 then redis.call('HINCRBY', KEYS[5], 'processed', processed) end
if failed > 0 then redis.call('HINCRBY', KEYS[5], 'failed', failed) end
if requeued > 0 then redis.call('HINCRBY', KEYS[5], 'requeued', requeued) end
if dead > 0 then
  redis.call('HINCRBY', KEYS[5], 'dead', dead)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now_ms - tonumber(ARGV[2])))
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[1]) + 1))
end
-- Cluster-wide rates: a ring of buckets per hash, bounded in size. Slot i holds t<i> (the bucket number it
-- counts now), p<i> and f<i>; a slot still holding an older bucket is reset before counting.
local function count_in(key, size, bucket)
  local slot = bucket % size
  if redis.call('HGET', key, 't' .. slot) ~= tostring(bucket) then
    redis.call('HSET', key, 't' .. slot, bucket, 'p' .. slot, processed, 'f' .. slot, failed)
  else
    if processed > 0 then redis.call('HINCRBY', key, 'p' .. slot, processed) end
    if failed > 0 then redis.call('HINCRBY', key, 'f' .. slot, failed) end
  end
end
if processed > 0 or failed > 0 then
  count_in(KEYS[6], 120, math.floor(now_ms / 1000))
  count_in(KEYS[7], 60, math.floor(now_ms / 60000))
end
-- The samples come last: under maxmemory (noeviction) Redis refuses a script whose first write is one that
-- may grow memory, not one whose first write is an LREM above, and a full Redis must take acks. pcall: when
-- nothing was removed (a batch of releases) a full Redis refuses the push, and samples are not worth an error.
if ARGV[4] ~= '' then
  local samples = cmsgpack.unpack(ARGV[4])
  -- LPUSH in slices: unpack() of thousands of values would overflow Lua's C stack.
  for first = 1, #samples, 500 do
    redis.pcall('LPUSH', KEYS[8], unpack(samples, first, math.min(first + 499, #samples)))
  end
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[5]) - 1)
end
return stale
