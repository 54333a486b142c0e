-- Appends batches of runs' chunks; each batch all or nothing and fenced
-- (both engines send this script, one call carrying many runs' batches).
-- KEYS     one stream key per batch, in order (a run may have several)
-- ARGV     writer id, MAXLEN ('' = no trimming), TTL seconds ('' = none),
--          notice ('p': PUBLISH, 's': SPUBLISH on a cluster, '' = none),
--          then per batch: first seq, chunk count, mode, and per chunk: data,
--          timestamp ms, complete ('1' or '')
--          Mode '': checked (the stream's top must be the seq before it).
--          Mode 'a<seq>': the error terminal of a run this writer broke off:
--          it follows <seq>, the last seq this writer stored, across the gap
--          of the chunks that were refused (their seq ids are never reused),
--          or starts the stream again when it vanished, so its readers learn
--          the run failed whatever their cursor.
--          Mode 'o': checked, and the seq before it is one this writer handed out
--          (not the top it found when it opened the run): the top entry must
--          also be this writer's own, or another writer took that seq, even
--          when this writer's batch of it is refused in the same call.
--          Mode '1', trusted: this writer stored the seq before it, on the connection
--          sending this, so only another writer can have moved the stream on,
--          and XADD itself refuses an ID at or below the stream's top: the
--          batch is appended without reading the top first (the fast path),
--          and the top is read only when that XADD is refused.
-- Returns  one {status, top seq} per batch:
--          'ok'        stored now (top = its last seq)
--          'dup'       this writer stored it before (a retry after a lost reply):
--                      every chunk is there, byte for byte, from this writer
--          'closed'    the run already has its terminal entry
--          'stale'     someone else moved the stream on, or it vanished
--          'wrongtype' the key holds something that is not a stream
-- Notice   after each batch stored ('ok'), the new top seq id as a decimal
--          string on the run's notice channel: the stream key with ':notices'
--          appended when it has a hash tag, else '{<key>}:notices', so it lives
--          in the key's slot (the rule of sse_redis.keys.notice_channel). A
--          hint only: a refusal (a user with no channel rights) is ignored.
local writer, maxlen, ttl, notice = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local publish = (notice == 's' and 'SPUBLISH') or (notice == 'p' and 'PUBLISH') or nil

-- The run's notice channel (keys.py's notice_channel: keep the two alike).
local function channel_of(key)
  local open = string.find(key, '{', 1, true)
  if open then
    local close = string.find(key, '}', open + 1, true)
    if close and close > open + 1 then return key .. ':notices' end
  end
  return '{' .. key .. '}:notices'
end

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

-- The first chunk of a trusted batch: refused (an error reply, or nil when
-- the stream is gone: NOMKSTREAM) unless its ID is above the stream's top.
local function append_first(key, seq, data, ts)
  local id = '0-' .. seq
  if seq == 1 then
    return redis.pcall('XADD', key, 'MAXLEN', '~', maxlen == '' and '9223372036854775807' or maxlen, id,
                       'seq_id', seq, 'data', data, 'timestamp', ts, 'writer', writer)
  end
  return redis.pcall('XADD', key, 'NOMKSTREAM', 'MAXLEN', '~', maxlen == '' and '9223372036854775807' or maxlen,
                     id, 'seq_id', seq, 'data', data, 'timestamp', ts, 'writer', writer)
end

-- The common case, lean (a token stream at human pace sends one chunk per
-- call, so this is what the server pays per token): one trusted batch (mode
-- '1') whose first chunk is not a terminal is stored here without the
-- general path's set-up. The same steps as the general path's fast path
-- below; when the first XADD is refused, the general path takes over (and
-- reads the top) without trying it again.
local lean_refused = false
if #KEYS == 1 and ARGV[7] == '1' and ARGV[10] ~= '1' then
  local key, first, count = KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6])
  if type(append_first(key, first, ARGV[8], ARGV[9])) == 'string' then
    for i = 1, count - 1 do
      local seq, c = first + i, 8 + 3 * i
      append(key, '0-' .. seq, seq, ARGV[c], ARGV[c + 1], ARGV[c + 2] == '1')
    end
    if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
    local last = first + count - 1
    if publish then redis.pcall(publish, channel_of(key), last) end
    return {{'ok', last}}
  end
  lean_refused = true
end

local function fields_of(entry)
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  return fields
end

-- Whether the batch's chunks are all stored, as sent, by this writer.
local function stored_before(key, explicit_ids, top_seq, first, count, chunks_at)
  local entries
  if explicit_ids then
    entries = redis.call('XRANGE', key, '0-' .. first, '0-' .. (first + count - 1))
  else -- time-based IDs: the newest entries, back to the batch's first
    entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', top_seq - first + 1)
    local oldest_first = {}
    for i = #entries, 1, -1 do oldest_first[#oldest_first + 1] = entries[i] end
    entries = oldest_first
  end
  if #entries < count then return false end
  for i = 0, count - 1 do
    local fields, c = fields_of(entries[i + 1]), chunks_at + 3 * i
    if tonumber(fields['seq_id']) ~= first + i or fields['writer'] ~= writer
        or fields['data'] ~= ARGV[c] or fields['timestamp'] ~= ARGV[c + 1] then
      return false
    end
  end
  return true
end

local results = {}
local tops = {} -- key -> last seq this call stored: its next batch is trusted too
local at = 5
for b = 1, #KEYS do
  local key = KEYS[b]
  local first, count = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local mode = ARGV[at + 2]
  local after_break = string.sub(mode, 1, 1) == 'a' and tonumber(string.sub(mode, 2)) or nil
  local trusted = mode == '1' or (after_break == nil and tops[key] == first - 1)
  local own = trusted or mode == 'o' -- the seq before it is this writer's
  local chunks_at = at + 3
  at = chunks_at + 3 * count
  local last = first + count - 1
  local status, top_seq, explicit_ids, top_writer = nil, 0, true, nil
  if trusted and ARGV[chunks_at + 2] ~= '1' and not lean_refused then -- (a lone terminal: checked path)
    local stored = append_first(key, first, ARGV[chunks_at], ARGV[chunks_at + 1])
    if type(stored) == 'string' then
      for i = 1, count - 1 do
        local seq, c = first + i, chunks_at + 3 * i
        append(key, '0-' .. seq, seq, ARGV[c], ARGV[c + 1], ARGV[c + 2] == '1')
      end
      if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
      status, top_seq = 'ok', last
    end
  end
  local newest = status == nil and redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1) or nil
  if status ~= nil then
    -- stored by the fast path
  elseif newest.err then
    status = 'wrongtype'
  elseif newest[1] then
    local entry = newest[1]
    local fields = fields_of(entry)
    top_seq = tonumber(fields['seq_id']) or 0
    top_writer = fields['writer']
    -- Streams the reference wrote use time-based IDs: keep their style.
    explicit_ids = string.sub(entry[1], 1, 2) == '0-'
    if fields['writer'] == writer and top_seq >= last
        and stored_before(key, explicit_ids, top_seq, first, count, chunks_at) then
      status = 'dup'
      -- A write of this connection, so that a WAIT after it also covers the
      -- batch stored by an earlier connection (a retry after a lost reply).
      redis.pcall('XSETID', key, entry[1])
    elseif fields['complete'] == 'true' then
      status = 'closed'
    end
  end
  if status == nil then
    if after_break ~= nil then
      if top_seq ~= after_break and newest[1] then status = 'stale' end
    elseif top_seq ~= first - 1 or (own and top_writer ~= writer) then
      status = 'stale'
    end
  end
  if status == nil and after_break ~= nil then
    -- 'broken': readers take the gap before it (or the lost stream) for what
    -- it is, chunks that were never stored, not chunks trimmed away.
    local args = {key}
    if maxlen ~= '' then args = {key, 'MAXLEN', '~', maxlen} end
    for _, v in ipairs({explicit_ids and ('0-' .. first) or '*', 'seq_id', first, 'data', ARGV[chunks_at],
                        'timestamp', ARGV[chunks_at + 1], 'complete', 'true', 'broken', 'true',
                        'writer', writer}) do
      args[#args + 1] = v
    end
    redis.call('XADD', unpack(args))
    if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
    status, top_seq = 'ok', last
  end
  if status == nil then
    for i = 0, count - 1 do
      local seq, c = first + i, chunks_at + 3 * i
      append(key, explicit_ids and ('0-' .. seq) or '*', seq, ARGV[c], ARGV[c + 1], ARGV[c + 2] == '1')
    end
    if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
    status, top_seq = 'ok', last
  end
  if status == 'ok' then
    tops[key] = last
    if publish then redis.pcall(publish, channel_of(key), last) end
  end
  results[b] = {status, top_seq}
end
return results
