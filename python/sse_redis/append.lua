-- Appends one batch of a run's chunks, all or nothing (both engines send it).
-- KEYS[1]  the run's stream
-- ARGV     writer id, first seq of the batch, MAXLEN ('' = no trimming),
--          TTL seconds ('' = no expiry), then per chunk: data, timestamp ms,
--          complete ('1' or '')
-- Returns  {'ok', last seq}      stored now
--          {'dup', top seq}      this writer's batch was stored before (a retry)
--          {'closed', top seq}   the run already has its terminal entry
--          {'stale', top seq}    someone else moved the stream on (or it vanished)
local key, writer = KEYS[1], ARGV[1]
local first = tonumber(ARGV[2])
local maxlen, ttl = ARGV[3], ARGV[4]
local count = (#ARGV - 4) / 3
local last = first + count - 1

local top_seq, explicit_ids = 0, true
local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
if top then
  local fields = {}
  for i = 1, #top[2], 2 do fields[top[2][i]] = top[2][i + 1] end
  top_seq = tonumber(fields['seq_id']) or 0
  -- Streams the reference wrote use time-based IDs: keep their style.
  explicit_ids = string.sub(top[1], 1, 2) == '0-'
  if fields['writer'] == writer and top_seq >= last then return {'dup', top_seq} end
  if fields['complete'] == 'true' then return {'closed', top_seq} end
end
if top_seq ~= first - 1 then return {'stale', top_seq} end

for i = 0, count - 1 do
  local seq = first + i
  local args = {'XADD', key}
  if maxlen ~= '' then
    args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
  end
  args[#args + 1] = explicit_ids and ('0-' .. seq) or '*'
  local base = 5 + 3 * i
  for _, v in ipairs({'seq_id', seq, 'data', ARGV[base], 'timestamp', ARGV[base + 1]}) do
    args[#args + 1] = v
  end
  if ARGV[base + 2] == '1' then
    args[#args + 1] = 'complete'; args[#args + 1] = 'true'
  end
  args[#args + 1] = 'writer'; args[#args + 1] = writer
  redis.call(unpack(args))
end
if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
return {'ok', last}
