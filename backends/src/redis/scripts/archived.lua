-- archived: ARGV = prefix, webhook ids... Marks the events that are still open as held by
-- the archive (an event gone meanwhile is not recreated).
for i = 2, #ARGV do
  local e = ekey(ARGV[i])
  if redis.call('EXISTS', e) == 1 then
    redis.call('HSET', e, 'archived', 1)
  end
end
return 0
