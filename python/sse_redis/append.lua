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
--          Run control (issue 13), one key and one batch per call, after the
--          writer id that call's own token:
--          Mode 'c': cancel. One chunk, the `event: cancelled` terminal,
--          stored after whatever the top is (seq top + 1; seq 1 in a stream
--          made for a run `start` registered that has no chunk yet), marked
--          `cancelled`; 'missing' when the run has no stream and no running
--          status, 'closed'/'cancelled' when it already ended, 'dup' when
--          this very token stored it (a retry). Publishes its seq, then
--          'cancel', on the run's notice channel.
--          Mode 's': start. Registers the run as running (its status, below)
--          unless it already ended; stores no entry.
--          Mode 'q': query. Stores nothing; returns {'ok', state, last_seq,
--          stop_reason, started_at ms, updated_at ms} ('' when unknown), or
--          {'missing', 0}: no status and no stream.
-- Returns  one {status, top seq} per batch:
--          'ok'        stored now (top = its last seq)
--          'dup'       this writer stored it before (a retry after a lost reply):
--                      every chunk is there, byte for byte, from this writer
--          'closed'    the run already has its terminal entry
--          'cancelled' the run already has its terminal entry, a cancel's
--          'stale'     someone else moved the stream on, or it vanished
--          'wrongtype' the key holds something that is not a stream
-- Notice   after each batch stored ('ok'), the new top seq id as a decimal
--          string on the run's notice channel: the stream key with ':notices'
--          appended when it has a hash tag, else '{<key>}:notices', so it lives
--          in the key's slot (the rule of sse_redis.keys.notice_channel). A
--          hint only: a refusal (a user with no channel rights) is ignored.
-- Status   a hash beside the stream, status_of(key) (keys.status_key: the same
--          slot): state (running | completed | failed | cancelled),
--          started_at and updated_at (ms, the writers' clocks), last_seq,
--          stop_reason. Written only where the stream's top cannot tell:
--          the run's first batch (seq 1: running, started_at unless `start`
--          set it), a chunk that carries a stop reason, a terminal (its
--          state, last_seq, updated_at); never for an ordinary batch, which
--          a token stream sends one chunk at a time: last_seq and updated_at
--          of a running run are read from the stream's top when asked (mode
--          'q'), so the common call pays three comparisons and a plain
--          string.find, not an HSET + EXPIRE (~30% more server work per
--          chunk). Its TTL is set to the script's TTL with each write of it,
--          so at a terminal it equals the stream's; mid-run it runs out
--          earlier only when the run outlasts the TTL, and then the stream
--          answers alone (mode 'q'). Written with pcall: a user without
--          rights on it still writes every chunk (the status then comes
--          from the stream alone).
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

-- The run's status key (keys.py's status_key: keep the two alike).
local function status_of(key)
  local open = string.find(key, '{', 1, true)
  if open then
    local close = string.find(key, '}', open + 1, true)
    if close and close > open + 1 then return key .. ':status' end
  end
  return '{' .. key .. '}:status'
end

-- The data of a chunk's first event (the codec's rule: the first block of
-- non-blank lines with a data field; its data values joined by LF).
local function first_data(chunk)
  local text = string.gsub(string.gsub(chunk, '\r\n', '\n'), '\r', '\n')
  local values = {}
  for line in string.gmatch(text .. '\n', '([^\n]*)\n') do
    if line == '' then
      if #values > 0 then break end
    elseif string.sub(line, 1, 1) ~= ':' then
      local colon = string.find(line, ':', 1, true)
      if colon and string.sub(line, 1, colon - 1) == 'data' then
        local value = string.sub(line, colon + 1)
        if string.sub(value, 1, 1) == ' ' then value = string.sub(value, 2) end
        values[#values + 1] = value
      elseif not colon and line == 'data' then
        values[#values + 1] = ''
      end
    end
  end
  if #values == 0 then return nil end
  return table.concat(values, '\n')
end

-- The chunk's stop reason (sniff_stop_reason's rule, read by cjson), or nil.
local function stop_reason_of(chunk)
  if not string.find(chunk, 'stop_reason', 1, true) then return nil end
  local data = first_data(chunk)
  if not data then return nil end
  local ok, object = pcall(cjson.decode, data)
  if ok and type(object) == 'table' and object['message_type'] == 'stop_reason'
      and type(object['stop_reason']) == 'string' then
    return object['stop_reason']
  end
  return nil
end

-- How a terminal chunk ends its run: an `event` field valued error or
-- cancelled (is_terminal's lines), else completed.
local function terminal_state(chunk)
  for line in string.gmatch(chunk, '[^\r\n]+') do
    local value = string.match(line, '^event: ?(.*)$')
    if value == 'error' then return 'failed' end
    if value == 'cancelled' then return 'cancelled' end
  end
  return 'completed'
end

-- Sets fields of the run's status and its TTL; ignores a refusal (rights).
local function set_status(key, fields, only_new)
  local skey = status_of(key)
  local stored = redis.pcall('HSET', skey, unpack(fields))
  if type(stored) == 'table' and stored.err then return end
  if only_new then redis.pcall('HSETNX', skey, only_new[1], only_new[2]) end
  if ttl ~= '' then redis.pcall('EXPIRE', skey, ttl) end
end

-- The status a stored batch changes (see Status above); nothing for most.
local function note(key, first, count, chunks_at)
  local fields, started = nil, nil
  if first == 1 then
    fields, started = {'state', 'running'}, {'started_at', ARGV[chunks_at + 1]}
  end
  for i = 0, count - 1 do
    local reason = stop_reason_of(ARGV[chunks_at + 3 * i])
    if reason then
      fields = fields or {}
      fields[#fields + 1], fields[#fields + 2] = 'stop_reason', reason
    end
  end
  local c = chunks_at + 3 * (count - 1)
  if ARGV[c + 2] == '1' then
    fields = fields or {}
    for _, v in ipairs({'state', terminal_state(ARGV[c]), 'last_seq', first + count - 1,
                        'updated_at', ARGV[c + 1]}) do
      fields[#fields + 1] = v
    end
  end
  if fields then set_status(key, fields, started) end
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
    note(key, first, count, 8)
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

-- Run control (modes 'c', 's', 'q' above): one key, one batch, ARGV[8] the
-- chunk (the cancel terminal; '' for the others), ARGV[9] the caller's clock (ms).
local function xadd_args(key, id, seq, data, ts, extra)
  local args = {key}
  if maxlen ~= '' then args = {key, 'MAXLEN', '~', maxlen} end
  for _, v in ipairs({id, 'seq_id', seq, 'data', data, 'timestamp', ts}) do args[#args + 1] = v end
  for _, v in ipairs(extra) do args[#args + 1] = v end
  return args
end

local function ended(fields, top)
  return {fields['cancelled'] == 'true' and 'cancelled' or 'closed', top}
end

local function pttl_of(key)
  local left = redis.pcall('PTTL', key)
  if type(left) ~= 'number' then return -1 end
  return left
end

-- Cancel: the terminal goes after whatever the top is. XADD with an explicit
-- ID above the top, inside this one script, so no batch of any writer can be
-- stored after it: a writer's batch stored later starts at a seq at or below
-- the cancel's (its own next seq), which XADD refuses, and the checked path
-- then finds the terminal ('cancelled').
local function cancel(key, data, ts)
  local newest = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest.err then return {'wrongtype', 0} end
  local skey = status_of(key)
  local seq, id, made = 1, '0-1', false
  if newest[1] then
    local entry = newest[1]
    local fields = fields_of(entry)
    local top = tonumber(fields['seq_id']) or 0
    if fields['complete'] == 'true' then
      if fields['writer'] == writer and fields['cancelled'] == 'true' then return {'dup', top} end
      return ended(fields, top)
    end
    seq = top + 1
    -- Streams the reference wrote use time-based IDs: keep their style.
    id = string.sub(entry[1], 1, 2) == '0-' and ('0-' .. seq) or '*'
  else
    -- No stream: only a run `start` registered (no chunk yet) can be cancelled.
    if redis.pcall('HGET', skey, 'state') ~= 'running' then return {'missing', 0} end
    made = true
  end
  redis.call('XADD', unpack(xadd_args(key, id, seq, data, ts,
                                      {'complete', 'true', 'cancelled', 'true', 'writer', writer})))
  -- The stream keeps its TTL (XADD leaves it); one made here takes the status's.
  local left = pttl_of(made and skey or key)
  if made and left > 0 then redis.call('PEXPIRE', key, left) end
  local decoded = data and first_data(data)
  local ok, object = pcall(cjson.decode, decoded or 'null')
  local reason = ok and type(object) == 'table' and type(object['reason']) == 'string' and object['reason']
  local stored = redis.pcall('HSET', skey, 'state', 'cancelled', 'last_seq', seq, 'updated_at', ts,
                             'stop_reason', reason or 'cancelled')
  if not (type(stored) == 'table' and stored.err) then
    if made then redis.pcall('HSETNX', skey, 'started_at', ts) end
    if left > 0 then redis.pcall('PEXPIRE', skey, left) elseif left == -1 then redis.pcall('PERSIST', skey) end
  end
  local channel = channel_of(key)
  if publish then
    redis.pcall(publish, channel, seq)
    redis.pcall(publish, channel, 'cancel')
  end
  return {'ok', seq}
end

-- Start: the run is registered as running unless it already ended.
local function start(key, ts)
  local newest = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest.err then return {'wrongtype', 0} end
  local top = 0
  if newest[1] then
    local fields = fields_of(newest[1])
    top = tonumber(fields['seq_id']) or 0
    if fields['complete'] == 'true' then return ended(fields, top) end
  end
  local skey = status_of(key)
  local state = redis.pcall('HGET', skey, 'state')
  if type(state) == 'string' and state ~= 'running' then return {state == 'cancelled' and 'cancelled' or 'closed', top} end
  if state ~= 'running' then set_status(key, {'state', 'running', 'updated_at', ts}, {'started_at', ts}) end
  return {'ok', top}
end

-- Query: the status hash, with the stream's top for what the hash leaves to it.
local function query(key)
  local newest = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest.err then return {'wrongtype', 0} end
  local flat = redis.pcall('HGETALL', status_of(key))
  local status = {}
  if not flat.err then
    for i = 1, #flat, 2 do status[flat[i]] = flat[i + 1] end
  end
  if not newest[1] and not status['state'] then return {'missing', 0} end
  local state = status['state'] or 'running'
  local last_seq = tonumber(status['last_seq']) or 0
  local started, updated = status['started_at'] or '', status['updated_at'] or ''
  if newest[1] then
    local fields = fields_of(newest[1])
    -- The stream is the truth on where the run stands.
    last_seq = tonumber(fields['seq_id']) or last_seq
    if fields['complete'] == 'true' then
      state = fields['cancelled'] == 'true' and 'cancelled' or terminal_state(fields['data'] or '')
    else
      state = 'running'
    end
    local stamp = tonumber(fields['timestamp'])
    if stamp and (tonumber(updated) or 0) < stamp then updated = fields['timestamp'] end
    if started == '' then -- no status (the reference's streams; expired): the first entry's time
      local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
      if oldest[1] then started = fields_of(oldest[1])['timestamp'] or '' end
    end
  end
  return {'ok', state, last_seq, status['stop_reason'] or '', started, updated}
end

if #KEYS == 1 and (ARGV[7] == 'c' or ARGV[7] == 's' or ARGV[7] == 'q') then
  local mode = ARGV[7]
  if mode == 'c' then return {cancel(KEYS[1], ARGV[8], ARGV[9])} end
  if mode == 's' then return {start(KEYS[1], ARGV[9])} end
  return {query(KEYS[1])}
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
      status = fields['cancelled'] == 'true' and 'cancelled' or 'closed'
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
    note(key, first, count, chunks_at)
    if publish then redis.pcall(publish, channel_of(key), last) end
  end
  results[b] = {status, top_seq}
end
return results
