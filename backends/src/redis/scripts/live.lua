-- live: ARGV = prefix, webhook id.
-- Returns false when the event has no open delivery, else
-- {type or false, received_at, subscription ids (JSON),
--  {{subscription id, state, attempts, due, last error or false}...}} for the open ones.
local wid = ARGV[2]
local e = redis.call('HMGET', ekey(wid), 'type', 'at', 'subs')
if not e[2] then
  return false
end
local open = {}
for _, sid in ipairs(cjson.decode(e[3])) do
  local st = redis.call('HMGET', dkey(wid, sid), 'state', 'attempts', 'due', 'last_error')
  if st[1] then
    open[#open + 1] = {sid, st[1], tonumber(st[2]) or 0, tonumber(st[3]) or 0, st[4] or false}
  end
end
return {e[1], tonumber(e[2]), e[3], open}
