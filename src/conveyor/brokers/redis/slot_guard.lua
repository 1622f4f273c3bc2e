-- Run first on a Redis Cluster (scripts.py puts it after lib.lua): refuse, having written
-- nothing, while the slot of KEYS[1] is migrating away from this node. Part of the slot's keys
-- may be on the target already; a script that wrote here and then touched one of them would
-- stop half done, since Redis does not roll back. In a migrating slot a script's access to a
-- key this node lacks is an error, so touching a key that never exists tells.
if type(redis.pcall('EXISTS', KEYS[1] .. ':~slot-probe')) == 'table' then
  return redis.error_reply('TRYAGAIN the slot of ' .. KEYS[1] .. ' is migrating')
end
