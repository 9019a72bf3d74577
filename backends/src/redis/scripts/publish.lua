-- publish: a batch of events, each checked and stored on its own (see `publisher.rs`): the
-- events with an idempotency key (the others go through the intake and `fan_out`).
-- ARGV = prefix, idempotency key expiry ms (core's `IDEMPOTENCY_WINDOW`), then per event:
-- webhook id, has type (0/1), type, received_at ms, payload, idempotency key name ('' for
-- none), fingerprint (64 hex), subscription count n, n subscription ids.
--
-- Invariants, per event: the idempotency key is recorded in the same step as the event and
-- its deliveries, so a key never names an event that was not stored; nothing of an event is
-- written before its checks passed. Events are applied in order, so a later event of the
-- batch sees the key of an earlier one (it answers 'duplicate', as in two calls).
-- Returns one reply per event: {'accepted'} | {'duplicate', first webhook id, matched}
--       | {'reused', first webhook id} | {'exists'} (the webhook id is taken; nothing written).
local expiry = ARGV[2]
-- Formatted once: a number argument is formatted by Redis at every call that gets it.
local now = string.format('%d', now_ms())
local sooner = false
-- Every delivery of the batch is due at the same `now` (see `store_event`).
local in_due = {}

local function publish_one(wid, has_type, etype, at, payload, idem, fp, first_sub, last_sub)
  local n = last_sub - first_sub + 1
  if idem ~= '' then
    local seen = redis.call('GET', idem)
    if seen then
      -- value: fingerprint ':' matched ':' webhook id
      local rest = string.sub(seen, 66)
      local c = string.find(rest, ':', 1, true)
      local matched, first = string.sub(rest, 1, c - 1), string.sub(rest, c + 1)
      if string.sub(seen, 1, 64) ~= fp then
        return {'reused', first}
      end
      return {'duplicate', first, tonumber(matched)}
    end
  end
  local e = ekey(wid)
  if n > 0 and redis.call('EXISTS', e) == 1 then
    return {'exists'}
  end
  if idem ~= '' then
    redis.call('SET', idem, fp .. ':' .. n .. ':' .. wid, 'PX', expiry)
  end
  if n == 0 then
    return {'accepted'}
  end
  local subs, seen_sub = {}, {}
  for i = first_sub, last_sub do
    local sid = ARGV[i]
    if not seen_sub[sid] then
      seen_sub[sid] = true
      subs[#subs + 1] = sid
    end
  end
  if store_event(wid, has_type, etype, at, payload, subs, cjson.encode(subs), now, in_due) then
    sooner = true
  end
  return {'accepted'}
end

local replies = {}
local i = 3
while i <= #ARGV do
  local first_sub = i + 8
  local last_sub = first_sub + tonumber(ARGV[i + 7]) - 1
  replies[#replies + 1] = publish_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], first_sub, last_sub)
  i = last_sub + 1
end
-- A subscription already due now is known to the workers (they claim it or wait for its free
-- concurrency): waking them for every event of a backlog would only cost a claim each.
if sooner then
  redis.call('PUBLISH', WAKE, '1')
end
flush_counts()
return replies
