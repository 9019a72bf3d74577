-- settle: ARGV = prefix, then groups of 8: webhook id, subscription id, token, kind
-- ('D' delivered, 'F' failed, 'R' retry, 'W' wait: deferred without an attempt), delay ms
-- (from now, for R and W), attempts, has last error (0/1), last error.
--
-- Clock: the caller sends how long to wait, never a time of its own; the due time is this
-- server's TIME plus the delay, so a worker whose clock is off cannot make a retry due early
-- (or late), nor spin on a deferral that is due in the server's past.
--
-- Fencing: a settlement applies only while its delivery is 'delivering' under the same token;
-- any other is stale, counted and changes nothing. Delivered/Failed remove the delivery (and
-- the event with its last open delivery); Retry/Defer queue it again after the given delay,
-- keeping the recorded last error when the settlement has none. A retry clears the
-- redelivered mark (an attempt was made and its outcome is not an end); a deferral keeps it.
-- Returns the number of stale settlements.
local now = now_ms()
local stale, wake = 0, false
for i = 2, #ARGV, 8 do
  local wid, sid, token, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local d = dkey(wid, sid)
  local st = redis.call('HMGET', d, 'state', 'token', 'worker')
  if st[1] ~= 'delivering' or st[2] ~= token then
    stale = stale + 1
  else
    local m = member(wid, sid)
    redis.call('ZREM', LEASES, m)
    if st[3] then
      redis.call('SREM', wkey(st[3]), m)
    end
    if kind == 'D' or kind == 'F' then
      redis.call('DEL', d)
      local e = ekey(wid)
      if redis.call('HINCRBY', e, 'open', -1) <= 0 then
        redis.call('DEL', e)
      end
    else
      local at = now + math.max(0, tonumber(ARGV[i + 4]) or 0)
      redis.call('HSET', d, 'state', 'queued', 'attempts', ARGV[i + 5], 'due', at)
      redis.call('HDEL', d, 'worker')
      if ARGV[i + 6] == '1' then
        redis.call('HSET', d, 'last_error', ARGV[i + 7])
      end
      if kind == 'R' then
        redis.call('HDEL', d, 'redelivered')
      end
      enqueue(wid, sid, at, now)
      if at <= now then
        wake = true
      end
    end
  end
end
flush_counts()
if wake then
  redis.call('PUBLISH', WAKE, '1')
end
return stale
