-- stats: ARGV = prefix. Returns {ready, scheduled, in flight}: per subscription with queued
-- deliveries (DUE) one ZCARD and one ZCOUNT, never a scan of the deliveries. The intake is
-- fanned out first (one batch), so its events count per delivery; beyond that batch, an event
-- still in the intake counts as one ready delivery, whatever its number of subscriptions.
local now = now_ms()
local _, left = fan_out(FAN_OUT_BATCH, now, true)
local ready, scheduled = left, 0
for _, sid in ipairs(redis.call('ZRANGE', DUE, 0, -1)) do
  local q = qkey(sid)
  local all = redis.call('ZCARD', q)
  local due = redis.call('ZCOUNT', q, '-inf', now)
  ready = ready + due
  scheduled = scheduled + all - due
end
return {ready, scheduled, redis.call('ZCARD', LEASES)}
