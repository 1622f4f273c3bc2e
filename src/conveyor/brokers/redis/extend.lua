-- extend: heartbeat; push the leases still held to now + lease.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:running
-- ARGV[1] now   ARGV[2] lease seconds   ARGV[3..] job id, token pairs
-- Returns the ids whose lease is lost (not running, or running under another token).

local now = clock(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local r = load(KEYS[1], id)
  if r and r[R_STATE] == 'r' and r[R_TOKEN] == tonumber(ARGV[i + 1]) then
    r[R_LEASE] = lease_until
    save(KEYS[1], id, r)
    redis.call('ZADD', KEYS[2], fmt(lease_until), id)
  else
    lost[#lost + 1] = id
  end
end
return lost
