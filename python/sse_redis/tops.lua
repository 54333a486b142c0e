-- The last entry ID of each stream in KEYS ('' when it is missing or not a
-- stream), for the hubs' periodic check of the streams they follow: a stream
-- that expired (expiry does not wake XREAD), and one that was lost and
-- written again below a reader's cursor (new entries there do not wake it
-- either), both end their readers with StreamNotFound. Read only; the keys
-- of one call share a slot (a blocker follows one slot group).
local tops = {}
for i, key in ipairs(KEYS) do
  local newest = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  tops[i] = (not newest.err and newest[1]) and newest[1][1] or ''
end
return tops
