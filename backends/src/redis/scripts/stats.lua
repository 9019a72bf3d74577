-- stats: ARGV = prefix. Returns {ready, scheduled, in flight}: per subscription with queued
-- deliveries (DUE) one ZCARD and one ZCOUNT, never a scan of the deliveries.
local now = now_ms()
local ready, scheduled = 0, 0
for _, sid in ipairs(redis.call('ZRANGE', DUE, 0, -1)) do
  local q = qkey(sid)
  local all = redis.call('ZCARD', q)
  local due = redis.call('ZCOUNT', q, '-inf', now)
  ready = ready + due
  scheduled = scheduled + all - due
end
return {ready, scheduled, redis.call('ZCARD', LEASES)}
