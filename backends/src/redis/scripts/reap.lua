-- reap: ARGV = prefix, stale after ms.
-- Workers whose last heartbeat (or claim) is older than `stale after` (at most 100 per call)
-- lose every delivery they hold: back to the queue, due now, redelivered. The workers are
-- forgotten. A worker that heartbeats in time is never touched. Returns how many went back.
local now = now_ms()
local cutoff = now - tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', WORKERS, '-inf', '(' .. cutoff, 'LIMIT', 0, 100)
local n = 0
for _, worker in ipairs(dead) do
  local w = wkey(worker)
  for _, m in ipairs(redis.call('SMEMBERS', w)) do
    local wid, sid = split_member(m)
    local st = redis.call('HMGET', dkey(wid, sid), 'state', 'worker')
    if st[1] == 'delivering' and st[2] == worker then
      redis.call('ZREM', LEASES, m)
      back_to_queue(wid, sid, now)
      n = n + 1
    end
  end
  redis.call('DEL', w)
  redis.call('ZREM', WORKERS, worker)
end
flush_counts()
if n > 0 then
  redis.call('PUBLISH', WAKE, '1')
end
return n
