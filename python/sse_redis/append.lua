-- Appends batches of runs' chunks; each batch all or nothing and fenced
-- (both engines send this script, one call carrying many runs' batches).
-- KEYS     one stream key per batch, in order (a run may have several)
-- ARGV     writer id, MAXLEN ('' = no trimming), TTL seconds ('' = none),
--          then per batch: first seq, chunk count, and per chunk:
--          data, timestamp ms, complete ('1' or '')
-- Returns  one {status, top seq} per batch:
--          'ok'        stored now (top = its last seq)
--          'dup'       this writer stored it before (a retry after a lost reply)
--          'closed'    the run already has its terminal entry
--          'stale'     someone else moved the stream on, or it vanished
--          'wrongtype' the key holds something that is not a stream
local writer, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]

local function append(key, id, seq, data, ts, complete)
  if maxlen == '' then
    if complete then
      return redis.call('XADD', key, id, 'seq_id', seq, 'data', data, 'timestamp', ts,
                        'complete', 'true', 'writer', writer)
    end
    return redis.call('XADD', key, id, 'seq_id', seq, 'data', data, 'timestamp', ts, 'writer', writer)
  end
  if complete then
    return redis.call('XADD', key, 'MAXLEN', '~', maxlen, id, 'seq_id', seq, 'data', data,
                      'timestamp', ts, 'complete', 'true', 'writer', writer)
  end
  return redis.call('XADD', key, 'MAXLEN', '~', maxlen, id, 'seq_id', seq, 'data', data,
                    'timestamp', ts, 'writer', writer)
end

local results = {}
local at = 4
for b = 1, #KEYS do
  local key = KEYS[b]
  local first, count = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local chunks_at = at + 2
  at = chunks_at + 3 * count
  local last = first + count - 1
  local status, top_seq, explicit_ids = nil, 0, true
  local newest = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest.err then
    status = 'wrongtype'
  elseif newest[1] then
    local entry, fields = newest[1], {}
    for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
    top_seq = tonumber(fields['seq_id']) or 0
    -- Streams the reference wrote use time-based IDs: keep their style.
    explicit_ids = string.sub(entry[1], 1, 2) == '0-'
    if fields['writer'] == writer and top_seq >= last then
      status = 'dup'
      -- A write of this connection, so that a WAIT after it also covers the
      -- batch stored by an earlier connection (a retry after a lost reply).
      redis.pcall('XSETID', key, entry[1])
    elseif fields['complete'] == 'true' then
      status = 'closed'
    end
  end
  if status == nil and top_seq ~= first - 1 then status = 'stale' end
  if status == nil then
    for i = 0, count - 1 do
      local seq, c = first + i, chunks_at + 3 * i
      append(key, explicit_ids and ('0-' .. seq) or '*', seq, ARGV[c], ARGV[c + 1], ARGV[c + 2] == '1')
    end
    if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
    status, top_seq = 'ok', last
  end
  results[b] = {status, top_seq}
end
return results
