-- heartbeat: ARGV = prefix, worker, lease ms.
-- Records the worker as alive now (WORKERS) and extends every lease it holds to now + lease.
-- Entries of its set that it no longer holds are dropped. Returns how many were renewed.
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local now = now_ms()
redis.call('ZADD', WORKERS, now, worker)
local w = wkey(worker)
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', w)) do
  local wid, sid = split_member(m)
  local st = redis.call('HMGET', dkey(wid, sid), 'state', 'worker')
  if st[1] == 'delivering' and st[2] == worker then
    redis.call('ZADD', LEASES, now + lease_ms, m)
    n = n + 1
  else
    redis.call('SREM', w, m)
  end
end
return n
