-- stats: ARGV = prefix. Returns {ready, scheduled, in flight, oldest ready age ms}.
--
-- Reads the counts kept as the queues change (QUEUED, LATER; see `common.lua`), not the
-- queues: O(log n) whatever the number of subscriptions with a backlog. The intake is fanned
-- out first (one batch), so its events count per delivery; beyond that batch, an event still in
-- the intake counts as one ready delivery, whatever its number of subscriptions. When COUNTED
-- is missing (the first run after an upgrade, or every 5 minutes) the counts are taken again
-- from the queues: QUEUED always, LATER only on the first run (its members are kept exactly by
-- every script; QUEUED is the one a script failing halfway could leave off).
-- The oldest ready age: how long the subscription whose earliest due delivery is the oldest
-- has had it due (DUE's first score), 0 when nothing is due.
local RECOUNT_EVERY_S = 300
local now = now_ms()
local _, left = fan_out(FAN_OUT_BATCH, now, true)
local counted = redis.call('GET', COUNTED)
if not counted then
  local total = 0
  local rebuild = redis.call('EXISTS', P .. ':counts-rebuilt') == 0
  if rebuild then
    redis.call('DEL', LATER)
  end
  for _, sid in ipairs(redis.call('ZRANGE', DUE, 0, -1)) do
    local q = qkey(sid)
    total = total + redis.call('ZCARD', q)
    if rebuild then
      local later = redis.call('ZRANGEBYSCORE', q, '(' .. now, '+inf', 'WITHSCORES')
      for i = 1, #later, 2 do
        redis.call('ZADD', LATER, later[i + 1], member(later[i], sid))
        redis.call('HSET', dkey(later[i], sid), 'later', 1)
      end
    end
  end
  redis.call('SET', QUEUED, total)
  redis.call('SET', P .. ':counts-rebuilt', 1)
  redis.call('SET', COUNTED, 1, 'EX', RECOUNT_EVERY_S)
end
local queued = tonumber(redis.call('GET', QUEUED)) or 0
local scheduled = redis.call('ZCOUNT', LATER, '(' .. now, '+inf')
local ready = math.max(0, queued - scheduled) + left
local oldest = 0
local first = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
if #first > 0 and tonumber(first[2]) <= now then
  oldest = now - tonumber(first[2])
end
return {ready, scheduled, redis.call('ZCARD', LEASES), oldest}
