-- Shared by every script (prepended to each). ARGV[1] is always the key prefix; the
-- scripts build their keys from it (see the key layout in the module docs of `redis`).
-- Every script reads the clock with TIME, so leases, heartbeats and due times compare
-- against one clock (the server's), whichever host the caller runs on.
local P = ARGV[1]
local DUE = P .. ':due'
local LEASES = P .. ':leases'
local WORKERS = P .. ':workers'
local WAKE = P .. ':wake'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function dkey(wid, sid) return P .. ':d:' .. wid .. ':' .. sid end
local function ekey(wid) return P .. ':e:' .. wid end
local function qkey(sid) return P .. ':q:' .. sid end
local function wkey(worker) return P .. ':w:' .. worker end
-- Webhook ids never contain '|' (Herald makes them), so the first '|' splits a member.
local function member(wid, sid) return wid .. '|' .. sid end
local function split_member(m)
  local i = string.find(m, '|', 1, true)
  return string.sub(m, 1, i - 1), string.sub(m, i + 1)
end

-- Queues a delivery at `at`. The score of a subscription in DUE is the earliest due time in
-- its queue: adding can only lower it (LT). Returns whether that score changed (the
-- subscription was absent or its earliest delivery is now sooner): only then can a worker
-- have been waiting for this subscription without knowing of the new delivery.
local function enqueue(wid, sid, at)
  redis.call('ZADD', qkey(sid), at, wid)
  return redis.call('ZADD', DUE, 'LT', 'CH', at, sid) == 1
end

-- Sets a subscription's score in DUE to its queue's earliest due time after deliveries left
-- the queue (or drops it when the queue is empty).
local function refresh_due(sid)
  local first = redis.call('ZRANGE', qkey(sid), 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', DUE, sid)
  else
    redis.call('ZADD', DUE, first[2], sid)
  end
end

-- Puts a leased delivery back in its queue, due now, marked as redelivered: its holder
-- (whose lease ran out or who was reaped) may have settled it in the archive already. The
-- caller has removed the lease entries.
local function back_to_queue(wid, sid, now)
  local d = dkey(wid, sid)
  redis.call('HSET', d, 'state', 'queued', 'due', now, 'redelivered', 1)
  redis.call('HDEL', d, 'worker')
  enqueue(wid, sid, now)
end
