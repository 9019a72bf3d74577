-- Shared by every script (prepended to each). ARGV[1] is always the key prefix; the
-- scripts build their keys from it (see the key layout in the module docs of `redis`).
-- Every script reads the clock with TIME, so leases, heartbeats and due times compare
-- against one clock (the server's), whichever host the caller runs on.
local P = ARGV[1]
local DUE = P .. ':due'
local LEASES = P .. ':leases'
local WORKERS = P .. ':workers'
local WAKE = P .. ':wake'
local INTAKE = P .. ':intake'
-- Queue counts kept as the queues change, so that `stats` (every api replica, every few
-- seconds) reads a few keys instead of walking every subscription's queue: QUEUED counts the
-- queued deliveries of all queues, LATER holds those queued for a time after their enqueueing
-- (retries and deferrals; first attempts are due at once), scored by due time and marked
-- `later` in their hash so that only they pay for leaving it. A script adds up its changes in
-- `queued_delta` and writes them once (`flush_counts`) before it returns. `stats` recounts from
-- the queues when COUNTED is missing (the first run after an upgrade) and at most every 5
-- minutes, which bounds any drift (a script that failed halfway).
local QUEUED = P .. ':queued'
local LATER = P .. ':later'
local COUNTED = P .. ':counted'
local queued_delta = 0
local function flush_counts()
  if queued_delta ~= 0 then
    redis.call('INCRBY', QUEUED, queued_delta)
    queued_delta = 0
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Lease tokens fence settlements, so a token must never be handed out twice, not even after
-- Redis restarted from an AOF that lost its last writes (`appendfsync everysec`) or failed
-- over to a replica that had not received them: `INCR` alone would count again from the
-- older value. So the counter never stands below this server's clock in ms × 1000: a restart
-- takes far longer than a millisecond, and a millisecond holds 1000 tokens (one lease
-- script's worth or more; a burst beyond that only moves the counter ahead of the clock,
-- which the next restart's floor catches up with). Checked once per script run. The numbers
-- stay below 2^53 (exact in Lua's doubles) until the year 2255, and are stored with '%d':
-- Lua would write a number this large as '1.8e+15'. What this cannot cover: a failover to a
-- node whose clock is behind by more than the failover took.
local TOKEN = P .. ':token'
local token_floor_set = false
local function next_token(now)
  if not token_floor_set then
    token_floor_set = true
    local floor = now * 1000
    if (tonumber(redis.call('GET', TOKEN)) or 0) < floor then
      redis.call('SET', TOKEN, string.format('%d', floor))
    end
  end
  return redis.call('INCR', TOKEN)
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

-- Queues a delivery at `at` (counted; in LATER when due after `now`). The score of a
-- subscription in DUE is the earliest due time in its queue: adding can only lower it (LT).
-- Returns whether that score changed (the subscription was absent or its earliest delivery is
-- now sooner): only then can a worker have been waiting for this subscription without knowing
-- of the new delivery.
local function enqueue(wid, sid, at, now)
  queued_delta = queued_delta + redis.call('ZADD', qkey(sid), at, wid)
  if tonumber(at) > now then
    redis.call('ZADD', LATER, at, member(wid, sid))
    redis.call('HSET', dkey(wid, sid), 'later', 1)
  end
  return redis.call('ZADD', DUE, 'LT', 'CH', at, sid) == 1
end

-- Takes a delivery out of its subscription's queue (and out of LATER when `later` is set).
local function dequeue(wid, sid, later)
  queued_delta = queued_delta - redis.call('ZREM', qkey(sid), wid)
  if later then
    redis.call('ZREM', LATER, member(wid, sid))
  end
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

-- Puts a leased delivery back in its queue, marked as redelivered: its holder (whose lease
-- ran out or who was reaped) may have settled it in the archive already. It keeps its place:
-- due when it was leased (a lease leaves 'due' alone), the head of its queue then; due now
-- would put it behind everything queued since, and a backlog could push its next attempt past
-- the recovery bound. The caller has removed the lease entries.
local function back_to_queue(wid, sid, now)
  local d = dkey(wid, sid)
  local at = math.min(tonumber(redis.call('HGET', d, 'due')) or now, now)
  redis.call('HSET', d, 'state', 'queued', 'due', at, 'redelivered', 1)
  redis.call('HDEL', d, 'worker')
  enqueue(wid, sid, at, now)
end

-- Stores an event and queues one delivery per subscription, all due at `at_due` (a string:
-- Redis would format a number at every call). `sids` are distinct; `subs` is their JSON array,
-- kept as the event's `subs`. `in_due` holds the subscriptions whose score in DUE is known to
-- be at most `at_due` already (one run stores many events for the same subscription at the
-- same time): a delivery added to their queue cannot lower it, so DUE is touched once per
-- subscription and run. Returns whether a subscription became due sooner (see `enqueue`).
local function store_event(wid, has_type, etype, at, payload, sids, subs, at_due, in_due)
  local sooner = false
  for _, sid in ipairs(sids) do
    -- attempts and token are absent until the first lease (readers take them as 0).
    redis.call('HSET', dkey(wid, sid), 'state', 'queued', 'due', at_due)
    if in_due[sid] then
      queued_delta = queued_delta + redis.call('ZADD', qkey(sid), at_due, wid)
    else
      in_due[sid] = true
      if enqueue(wid, sid, at_due, tonumber(at_due)) then
        sooner = true
      end
    end
  end
  if has_type == '1' then
    redis.call('HSET', ekey(wid), 'payload', payload, 'at', at, 'subs', subs, 'open', #sids,
      'type', etype)
  else
    redis.call('HSET', ekey(wid), 'payload', payload, 'at', at, 'subs', subs, 'open', #sids)
  end
  return sooner
end

-- How many intake records one step fans out: ~15 µs of Redis time each, so a step holds
-- Redis for a few milliseconds at most. A step also stops once it took FAN_OUT_BYTES of
-- records (taken a few at a time), so that large payloads (up to the api's limit, 1 MiB by
-- default) do not make one script copy hundreds of megabytes.
local FAN_OUT_BATCH = 256
local FAN_OUT_BYTES = 1024 * 1024
local FAN_OUT_CHUNK = 8

-- The parts of an intake record (layout in `publisher.rs`): webhook id, has type ('0'/'1'),
-- type, received_at, subscription ids (JSON and decoded), payload; nothing for a record that
-- does not have that layout.
local function parse_record(r)
  local a = string.find(r, '\n', 1, true)
  local b = a and string.find(r, '\n', a + 1, true)
  local c = b and string.find(r, '\n', b + 1, true)
  local d = c and string.find(r, '\n', c + 1, true)
  if not d or a == 1 then
    return nil
  end
  local subs = string.sub(r, c + 1, d - 1)
  local ok, sids = pcall(cjson.decode, subs)
  if not ok or type(sids) ~= 'table' or #sids == 0 then
    return nil
  end
  for _, sid in ipairs(sids) do
    if type(sid) ~= 'string' then
      return nil
    end
  end
  return string.sub(r, 1, a - 1), string.sub(r, a + 1, a + 1), string.sub(r, a + 2, b - 1),
    string.sub(r, b + 1, c - 1), subs, string.sub(r, d + 1), sids
end

-- Fans out up to `limit` events from the intake, oldest first: each record becomes its event
-- and its deliveries, due `now` (see `publisher.rs` for the record's layout). Popping and
-- storing happen in the calling script, so a record is never both gone and not stored. A
-- record whose webhook id is taken by a live event is dropped and logged: Herald mints webhook
-- ids (ULIDs), so this only happens to a caller that reuses one. With `wake`, publishes a
-- wake-up when a subscription became due sooner (a reader fanning out tells the workers; a
-- lease takes the work itself). Returns how many records it took and how many are left.
local function fan_out(limit, now, wake)
  local taken, bytes, sooner = 0, 0, false
  local at_due = string.format('%d', now)
  local in_due = {}
  while taken < limit and bytes < FAN_OUT_BYTES do
    local records = redis.call('LPOP', INTAKE, math.min(FAN_OUT_CHUNK, limit - taken))
    if not records then
      break
    end
    taken = taken + #records
    for _, r in ipairs(records) do
      bytes = bytes + #r
      local wid, has_type, etype, at, subs, payload, sids = parse_record(r)
      if not wid then
        -- Never one Herald wrote: an error here would end the script after the pop, and Redis
        -- keeps a script's writes up to an error, so the records after it would be lost.
        redis.log(redis.LOG_WARNING, 'herald: malformed intake record dropped: ' ..
          string.gsub(string.sub(r, 1, 64), '%c', '?'))
      elseif redis.call('EXISTS', ekey(wid)) == 1 then
        redis.log(redis.LOG_WARNING, 'herald: intake record dropped, webhook id ' .. wid ..
          ' is taken by a live event')
      else
        sooner = store_event(wid, has_type, etype, at, payload, sids, subs, at_due, in_due)
          or sooner
      end
    end
  end
  if taken == 0 then
    return 0, 0
  end
  flush_counts()
  if wake and sooner then
    redis.call('PUBLISH', WAKE, '1')
  end
  return taken, redis.call('LLEN', INTAKE)
end
