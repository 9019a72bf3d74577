-- live: ARGV = prefix, webhook id.
-- Returns false when the event has no open delivery, 'pending' when it was not found yet but
-- the intake still holds events (call again), else
-- {type or false, received_at, subscription ids (JSON),
--  {{subscription id, state, attempts, due, last error or false}...}} for the open ones.
--
-- Read your own write: an accepted event may still wait in the intake (no delivery process
-- has fanned it out yet), so a miss fans out the intake, oldest first, until the event shows
-- or the intake is empty: a few batches per call, so that one call holds Redis briefly.
local wid = ARGV[2]
local function read()
  return redis.call('HMGET', ekey(wid), 'type', 'at', 'subs')
end
local e = read()
if not e[2] then
  local now = now_ms()
  local left = redis.call('LLEN', INTAKE)
  for _ = 1, 4 do
    if left == 0 then
      return false
    end
    local took
    took, left = fan_out(FAN_OUT_BATCH, now, true)
    e = read()
    if e[2] or took == 0 then
      break
    end
  end
  if not e[2] then
    return left > 0 and 'pending' or false
  end
end
local open = {}
for _, sid in ipairs(cjson.decode(e[3])) do
  local st = redis.call('HMGET', dkey(wid, sid), 'state', 'attempts', 'due', 'last_error')
  if st[1] then
    open[#open + 1] = {sid, st[1], tonumber(st[2]) or 0, tonumber(st[3]) or 0, st[4] or false}
  end
end
return {e[1], tonumber(e[2]), e[3], open}
