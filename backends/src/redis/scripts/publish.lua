-- publish: ARGV = prefix, webhook id, has type (0/1), type, received_at ms, payload,
-- idempotency key name ('' for none), fingerprint (64 hex), key expiry ms, subscription ids...
--
-- Invariants: the idempotency key is recorded in the same step as the event and its
-- deliveries, so a key never names an event that was not stored. Nothing is written before
-- every check passed (a script error does not roll back earlier writes).
-- Returns {'accepted'} | {'duplicate', first webhook id, matched} | {'reused', first webhook id}
--       | {'exists'} (the webhook id is taken; nothing written).
local wid = ARGV[2]
local idem = ARGV[7]
local fp = ARGV[8]
local first_sub = 10
local n = #ARGV - first_sub + 1

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
  redis.call('SET', idem, fp .. ':' .. n .. ':' .. wid, 'PX', ARGV[9])
end
if n == 0 then
  return {'accepted'}
end

local now = now_ms()
local subs, seen_sub, open, sooner = {}, {}, 0, false
for i = first_sub, #ARGV do
  local sid = ARGV[i]
  if not seen_sub[sid] then
    seen_sub[sid] = true
    subs[#subs + 1] = sid
    redis.call('HSET', dkey(wid, sid), 'state', 'queued', 'attempts', 0, 'due', now, 'token', 0)
    if enqueue(wid, sid, now) then
      sooner = true
    end
    open = open + 1
  end
end
redis.call('HSET', e, 'payload', ARGV[6], 'at', ARGV[5], 'subs', cjson.encode(subs), 'open', open)
if ARGV[3] == '1' then
  redis.call('HSET', e, 'type', ARGV[4])
end
-- A subscription already due now is known to the workers (they claim it or wait for its free
-- concurrency): waking them for every event of a backlog would only cost a claim each.
if sooner then
  redis.call('PUBLISH', WAKE, '1')
end
return {'accepted'}
