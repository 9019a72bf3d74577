-- requeue: ARGV = prefix, webhook id, has type (0/1), type, received_at ms, payload,
-- subscription ids (JSON), then groups of 4: subscription id, attempts, has last error,
-- last error.
--
-- Queues each delivery that is not open, due now, for one more attempt (final_attempt =
-- attempts + 1) and not marked redelivered (the archive's end record is the one being
-- replayed). The event hash is recreated from the archive's copy when it is gone (marked
-- archived). Returns how many were queued.
local wid = ARGV[2]
local now = now_ms()
local n = 0
for i = 8, #ARGV, 4 do
  local sid = ARGV[i]
  local d = dkey(wid, sid)
  if redis.call('EXISTS', d) == 0 then
    local attempts = tonumber(ARGV[i + 1])
    redis.call('HSET', d, 'state', 'queued', 'attempts', attempts,
      'final_attempt', attempts + 1, 'due', now, 'token', 0)
    if ARGV[i + 2] == '1' then
      redis.call('HSET', d, 'last_error', ARGV[i + 3])
    end
    enqueue(wid, sid, now, now)
    n = n + 1
  end
end
if n > 0 then
  local e = ekey(wid)
  if redis.call('EXISTS', e) == 1 then
    redis.call('HINCRBY', e, 'open', n)
  else
    redis.call('HSET', e, 'payload', ARGV[6], 'at', ARGV[5], 'subs', ARGV[7], 'open', n,
      'archived', 1)
    if ARGV[3] == '1' then
      redis.call('HSET', e, 'type', ARGV[4])
    end
  end
  redis.call('PUBLISH', WAKE, '1')
end
flush_counts()
return n
