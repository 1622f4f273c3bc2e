-- cancelling: which of the leases given (of this queue) are held by a run with a cancel request.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:control (see request_cancel.lua)
-- ARGV[1..] job id, token pairs
-- Returns id, grace pairs of those held (running with that token) whose run was asked to cancel.

local out = {}
if redis.call('EXISTS', KEYS[2]) == 0 then return out end
for i = 1, #ARGV, 2 do
  local id, token = ARGV[i], tonumber(ARGV[i + 1])
  local mark = redis.call('HGET', KEYS[2], id .. '\31c')
  if mark and tonumber(string.match(mark, '^(%S+)')) == token then
    local r = load(KEYS[1], id)
    if r and r[R_STATE] == 'r' and r[R_TOKEN] == token then
      out[#out + 1] = id
      out[#out + 1] = string.match(mark, '^%S+ (%S+)') or '0'
    end
  end
end
return out
