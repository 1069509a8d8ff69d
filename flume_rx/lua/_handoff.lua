-- _handoff: shared by settle and cancel, which begin with it (Redis scripts cannot include files): the
-- workflow hand-offs a job makes as it leaves for good (acked, dead, aborted, or cancelled while waiting).
-- A hand-off is five entries of a flat msgpack array: (outcome number, kind, key index into KEYS, data, extra).
-- "push": data (a job) goes onto the queue KEYS[index]. With extra > 0, the job is a chain's next step and
-- KEYS[extra] its record: one cancelled before its turn is not pushed; otherwise it is no longer to come.
-- "stop": a later step of a chain that stopped: its record KEYS[index] says cancelled with data as its job
-- record, kept extra ms, and its waiters are told.
-- "join": data (a member's outcome) is recorded as field m<extra> of the group KEYS[index], unless already
-- there; the member that completes the group (its "size") pushes the callback onto the queue
-- KEYS[index + 1]: the group's "head", every member's outcome in order, its "mid", the time now (the
-- callback's enqueued_at) and its "tail" make the callback's job record (the head ends with the header of the
-- outcomes' list), and the group is gone. KEYS[index + 2], KEYS[index + 3] and KEYS[index + 4] are the callback
-- queue's dead letters, the callback's record and the queue's stats: a callback cancelled before its turn is
-- not pushed; a completed record longer than the group's "max" (the fetch would dead-letter it unread) goes to
-- the dead letters instead as the group's "over" record, which says why, counted as failed and dead as the
-- fetch counts a record too large, and the callback's waiters are told (see workflows.group_record).

-- A key a script writes that holds another type (bad data) would fail the call half-way, and Redis does not
-- undo a script's writes: the keys are checked first, and the call refused before it writes anything.
local function wrong_type(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    return 'settle: ' .. key .. ' holds a ' .. found .. ', not a ' .. kind
  end
  return nil
end

-- The first key of `flow`'s hand-offs that holds the wrong type, as an error message; nil when none does.
local function handoffs_refused(flow)
  local bad = nil
  for j = 1, #flow, 5 do
    local kind, index = flow[j + 1], tonumber(flow[j + 2])
    if kind == 'push' then
      bad = bad or wrong_type(KEYS[index], 'list')
      if tonumber(flow[j + 4]) > 0 then bad = bad or wrong_type(KEYS[tonumber(flow[j + 4])], 'hash') end
    elseif kind == 'join' then
      bad = bad or wrong_type(KEYS[index], 'hash') or wrong_type(KEYS[index + 1], 'list')
        or wrong_type(KEYS[index + 2], 'zset') or wrong_type(KEYS[index + 3], 'hash')
        or wrong_type(KEYS[index + 4], 'hash')
    else
      bad = bad or wrong_type(KEYS[index], 'hash')
    end
  end
  return bad
end

-- Makes the hand-off at flow[j .. j + 4].
local function hand_off(flow, j, now_ms)
  local index = tonumber(flow[j + 2])
  local key = KEYS[index]
  if flow[j + 1] == 'push' then
    local record = KEYS[tonumber(flow[j + 4])]
    if record then
      if redis.call('HGET', record, 'state') == 'cancelled' then
        return
      end
      redis.call('HDEL', record, 'chained')
    end
    redis.call('LPUSH', key, flow[j + 3])
  elseif flow[j + 1] == 'stop' then
    redis.call('HSET', key, 'state', 'cancelled', 'at_ms', now_ms, 'job', flow[j + 3])
    redis.call('PEXPIRE', key, tonumber(flow[j + 4]))
    redis.call('PUBLISH', key, 'cancelled')
  else
    local size = tonumber(redis.call('HGET', key, 'size'))
    if size and redis.call('HSETNX', key, 'm' .. flow[j + 4], flow[j + 3]) == 1
        and redis.call('HINCRBY', key, 'settled', 1) == size then
      local parts = { redis.call('HGET', key, 'head') }
      local bytes = #parts[1]
      for m = 0, size - 1 do
        parts[m + 2] = redis.call('HGET', key, 'm' .. m)
        bytes = bytes + #parts[m + 2]
      end
      -- Groups made before the callback's enqueued_at was written here have no 'mid' (their tail holds it).
      local mid = redis.call('HGET', key, 'mid')
      if mid then
        parts[#parts + 1] = mid .. cmsgpack.pack(now_ms / 1000)
        bytes = bytes + #parts[#parts]
      end
      parts[#parts + 1] = redis.call('HGET', key, 'tail')
      bytes = bytes + #parts[#parts]
      local max_bytes = tonumber(redis.call('HGET', key, 'max') or '0')
      if redis.call('HGET', KEYS[index + 3], 'state') == 'cancelled' then
        -- Cancelled before its turn: not run (its record already says so).
      elseif max_bytes > 0 and bytes > max_bytes then
        local over = redis.call('HGET', key, 'over')
        redis.call('ZADD', KEYS[index + 2], now_ms, over)
        redis.call('HINCRBY', KEYS[index + 4], 'failed', 1)
        redis.call('HINCRBY', KEYS[index + 4], 'dead', 1)
        redis.call('HSET', KEYS[index + 3], 'state', 'dead', 'at_ms', now_ms, 'job', over)
        redis.call('PEXPIRE', KEYS[index + 3], tonumber(redis.call('HGET', key, 'keep') or '86400000'))
        redis.call('PUBLISH', KEYS[index + 3], 'dead')
      else
        redis.call('HDEL', KEYS[index + 3], 'chained')
        redis.call('LPUSH', KEYS[index + 1], table.concat(parts))
      end
      redis.call('DEL', key)
    end
  end
end
