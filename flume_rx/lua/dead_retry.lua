-- dead_retry(KEYS[1]=dead, KEYS[2]=queue, ARGV[1]=limit, ARGV[2..]=(payload, new_payload or "") pairs, or none
--            for the oldest `limit` dead letters) -> count moved
-- Moves dead letters back onto the enqueue end of the queue, optionally rewritten (e.g. attempt reset).
local moved = 0
if #ARGV == 1 then
  local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
  for _, payload in ipairs(members) do
    redis.call('ZREM', KEYS[1], payload)
    redis.call('LPUSH', KEYS[2], payload)
  end
  return #members
end
for i = 2, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local new_payload = ARGV[i + 1]
    if new_payload == '' then
      new_payload = ARGV[i]
    end
    redis.call('LPUSH', KEYS[2], new_payload)
    moved = moved + 1
  end
end
return moved
