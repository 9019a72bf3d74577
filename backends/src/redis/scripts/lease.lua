-- lease: ARGV = prefix, worker, lease ms, max, per subscription, byte budget,
-- then pairs (subscription id, deliveries this worker has in flight for it).
--
-- 0. Events waiting in the intake are fanned out into their deliveries, due now (up to
--    FAN_OUT_BATCH records; see `fan_out`).
-- 1. Leases that ended (score < now in LEASES) go back to their queues, due now, redelivered.
-- 2. Due deliveries are leased by the fairness rule written once, on `WorkQueue` in
--    herald-core's `backend` module (the SQLite claim follows the same rule): the subscriptions
--    with due work (score <= now in DUE) from after the cursor (`{p}:cursor`), each up to its
--    free concurrency, at most `max` in all, within the byte budget. Each lease gets a fresh
--    token (`next_token`).
-- 3. next_due: how long (ms from this server's now) until the earliest due time in the
--    future (DUE) or lease end (LEASES): a delay, so that the caller's clock does not matter.
--    None when the byte budget stopped the claim, as the rule says. Zero while records are
--    left in the intake, so that the caller comes back for them at once.
-- Returns {next_due or false, payloads, jobs, dropped}:
--   payloads: {payload, type or false, received_at, subscription ids (JSON), archived 0/1}
--   jobs: {webhook id, subscription id, attempts, final_attempt or false, token,
--          redelivered 0/1, payload index (1-based)}
--   dropped: members ('wid|sid') removed because their delivery or event hash was missing.
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local per = tonumber(ARGV[5])
local budget = tonumber(ARGV[6])
local busy = {}
for i = 7, #ARGV, 2 do
  busy[ARGV[i]] = tonumber(ARGV[i + 1])
end
local now = now_ms()
redis.call('ZADD', WORKERS, now, worker)
local _, intake_left = fan_out(FAN_OUT_BATCH, now, false)

local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, 1000)
for _, m in ipairs(expired) do
  local wid, sid = split_member(m)
  local st = redis.call('HMGET', dkey(wid, sid), 'state', 'worker')
  redis.call('ZREM', LEASES, m)
  if st[2] then
    redis.call('SREM', wkey(st[2]), m)
  end
  if st[1] == 'delivering' then
    back_to_queue(wid, sid, now)
  end
end

local jobs, payloads, index, dropped = {}, {}, {}, {}
local bytes = 0
local spent = false

-- Leases one queued delivery; returns false once the byte budget is spent.
local function take(sid, wid)
  local d = dkey(wid, sid)
  local st = redis.call('HMGET', d, 'state', 'attempts', 'final_attempt', 'redelivered', 'later')
  if st[1] ~= 'queued' then
    dequeue(wid, sid, true)
    dropped[#dropped + 1] = member(wid, sid)
    return true
  end
  local idx = index[wid]
  if not idx then
    local e = redis.call('HMGET', ekey(wid), 'payload', 'type', 'at', 'subs', 'archived')
    if not e[1] then
      dequeue(wid, sid, true)
      redis.call('DEL', d)
      dropped[#dropped + 1] = member(wid, sid)
      return true
    end
    if #jobs > 0 and bytes + #e[1] > budget then
      return false
    end
    bytes = bytes + #e[1]
    payloads[#payloads + 1] = {e[1], e[2], tonumber(e[3]), e[4], e[5] == '1' and 1 or 0}
    idx = #payloads
    index[wid] = idx
  end
  local token = next_token(now)
  redis.call('HSET', d, 'state', 'delivering', 'token', string.format('%d', token), 'worker',
    worker)
  dequeue(wid, sid, st[5])
  if st[5] then
    redis.call('HDEL', d, 'later')
  end
  local m = member(wid, sid)
  redis.call('ZADD', LEASES, now + lease_ms, m)
  redis.call('SADD', wkey(worker), m)
  jobs[#jobs + 1] = {wid, sid, tonumber(st[2]) or 0, st[3] or false, token,
    st[4] == '1' and 1 or 0, idx}
  return true
end

local cursor_key = P .. ':cursor'
local cursor = redis.call('GET', cursor_key) or ''
local subs = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, 10000)
table.sort(subs)
local start = 1
for i, sid in ipairs(subs) do
  if sid > cursor then
    start = i
    break
  end
end
local last = nil
for k = 0, #subs - 1 do
  if #jobs >= max then
    break
  end
  local sid = subs[((start - 1 + k) % #subs) + 1]
  last = sid
  local free = per - (busy[sid] or 0)
  if free > 0 then
    local wids = redis.call('ZRANGEBYSCORE', qkey(sid), '-inf', now, 'LIMIT', 0,
      math.min(free, max - #jobs))
    for _, wid in ipairs(wids) do
      if not take(sid, wid) then
        spent = true
        break
      end
    end
    refresh_due(sid)
  end
  if spent then
    break
  end
end
if last then
  redis.call('SET', cursor_key, last)
end

local next_due = false
if not spent then
  local later = redis.call('ZRANGEBYSCORE', DUE, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #later > 0 then
    next_due = tonumber(later[2])
  end
  local lease_end = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  if #lease_end > 0 and (not next_due or tonumber(lease_end[2]) < next_due) then
    next_due = tonumber(lease_end[2])
  end
  if intake_left > 0 then
    next_due = now
  end
  if next_due then
    next_due = math.max(0, next_due - now)
  end
end
flush_counts()
return {next_due, payloads, jobs, dropped}
