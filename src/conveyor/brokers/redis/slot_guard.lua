-- Run first on a Redis Cluster (scripts.py puts it after lib.lua): refuse, having written
-- nothing, while the slot of KEYS[1] is migrating away from this node. Part of the slot's keys
-- may be on the target already; a script that wrote here and then touched one of them would
-- stop half done, since Redis does not roll back. In a migrating slot a script's access to a
-- key this node lacks is an error, so touching a key that never exists tells.
-- The probe shares KEYS[1]'s slot: a key with a {hash tag} keeps it, one without (the worker
-- registry) is made the probe's tag.
local probe = KEYS[1] .. ':~slot-probe'
if not string.find(KEYS[1], '{', 1, true) then
  probe = '{' .. KEYS[1] .. '}:~slot-probe'
end
if type(redis.pcall('EXISTS', probe)) == 'table' then
  return redis.error_reply('TRYAGAIN the slot of ' .. KEYS[1] .. ' is migrating')
end
