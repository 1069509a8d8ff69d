-- cron_tick(KEYS[1]=queue, KEYS[2]=tick claim {ns:queue}:cron:<name>:<tick_ms>, KEYS[3]=last tick of the schedule,
--           ARGV[1]=tick_ms, ARGV[2]=payload, ARGV[3]=claim_ttl_ms, ARGV[4]=on_time_ms,
--           ARGV[5]=missed "run_once"|"skip") -> {status, last tick ms}
-- Decides one tick of a cron schedule for every process and host at once: the first caller claims the tick
-- (SET NX) and, in the same step, enqueues the job or records the tick as skipped; every other caller finds the
-- claim and does nothing. No leader, no lock to outlive its holder. status: "enqueued", "skipped" (a tick
-- found more than on_time_ms late, i.e. missed while no worker ran, with missed = "skip", or the first tick a
-- schedule ever sees late), "taken" (another caller had it) or "old" (a later tick was already decided).
-- The claim keeps the outcome ("enqueued" or "skipped") for inspection.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tick = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[3]))
if last and last >= tick then
  return {'old', last}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[3])) then
  return {'taken', last or -1}
end
redis.call('SET', KEYS[3], tick)
local late = now_ms - tick > tonumber(ARGV[4])
if late and (ARGV[5] ~= 'run_once' or not last) then
  redis.call('SET', KEYS[2], 'skipped', 'KEEPTTL')
  return {'skipped', tick}
end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], 'enqueued', 'KEEPTTL')
return {'enqueued', tick}
