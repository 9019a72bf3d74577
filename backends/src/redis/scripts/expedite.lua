-- expedite: ARGV = prefix, subscription id, batch size.
-- Makes up to `batch` of the subscription's not-yet-due deliveries due now; returns how many
-- (the caller repeats while a full batch was moved).
local sid = ARGV[2]
local now = now_ms()
local q = qkey(sid)
local later = redis.call('ZRANGEBYSCORE', q, '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
for _, wid in ipairs(later) do
  redis.call('ZADD', q, now, wid)
  redis.call('HSET', dkey(wid, sid), 'due', now)
  redis.call('HDEL', dkey(wid, sid), 'later')
  redis.call('ZREM', LATER, member(wid, sid))
end
if #later > 0 then
  redis.call('ZADD', DUE, 'LT', now, sid)
  redis.call('PUBLISH', WAKE, '1')
end
return #later
