r"""The Lua scripts behind :class:`~lionagi_qe.backends.redis.RedisMemory`.

Every write that touches an entry and its indexes is one script, so Redis runs it atomically
(one round trip, no client-side transaction). Conventions shared by all scripts:

- ``base`` (an ``ARGV``) is the store's keyspace, ``prefix`` plus a hash tag; the scripts derive
  ``base .. "e:" .. key`` (an entry) and ``base .. "p:" .. name`` (a partition set) from it.
- An entry is a hash of two fields: ``v``, the value's JSON text, and ``h``, the header
  ``"version created updated expires size\x1fpartition\x1fmetadata"`` (created/updated in server
  µs from ``TIME``, expires in server ms or empty, size = ``#key + #value``, Lua's ``#`` being the
  UTF-8 byte length). Two fields instead of eight: a value over 64 bytes turns a hash into a
  hashtable, where every field costs its own allocations (about 400 bytes an entry instead of
  700). Neither partition names nor JSON text can hold the ``\x1f`` separator.
- ``idx`` (a sorted set, every score 0, so ``ZRANGEBYLEX`` walks keys in byte order, which for
  UTF-8 is code-point order) and ``kp`` (a hash key → partition) index every entry written and
  not yet deleted or purged; the partition sets mirror ``kp``. Redis expires entries natively,
  leaving index members behind: readers treat a member without a live entry as absent, and
  ``cleanup_expired``, ``clear_partition`` and later writes of the key purge them.
- Write scripts do every read that can fail (``WRONGTYPE``) before their first write, and carry a
  ``#!lua`` shebang so an out-of-memory server refuses them before they start: a script runs
  whole or not at all. Large numbers are written with ``%.0f`` (Lua 5.1 numbers are doubles
  and ``tostring`` keeps 14 digits).
- Scripts reach keys derived from ``base`` without declaring them in ``KEYS``; all of them share
  the keyspace's hash tag, hence one cluster slot, which Redis Cluster accepts.
"""

from __future__ import annotations

__all__ = [
    "CLEANUP_PAGE",
    "CLEAR_PARTITION_PAGE",
    "DELETE",
    "EXPIRE",
    "INCREMENT",
    "LIVE_KEYS_PAGE",
    "RANGE_VALUES_PAGE",
    "SCAN_PAGE",
    "STATS_PAGE",
    "STORE",
    "STORE_BATCH",
    "STORE_BATCH_FIELDS",
    "STORE_MANY",
    "VALUES",
]

_WRITE = "#!lua\n"
_READ = "#!lua flags=no-writes\n"

_HELPERS = r"""
local function fmt(n) return string.format('%.0f', n) end

local function now_us()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end

-- Expiry as absolute server milliseconds ('' when ttl_ms is '').
local function expiry(now, ttl_ms)
  if ttl_ms == '' then return '' end
  return fmt(math.floor(now / 1000) + tonumber(ttl_ms))
end

local function set_expiry(entry, expires)
  if expires == '' then
    redis.call('PERSIST', entry)
  else
    redis.call('PEXPIREAT', entry, expires)
  end
end

local function header(version, created, updated, expires, size, partition, metadata)
  return version .. ' ' .. created .. ' ' .. updated .. ' ' .. expires .. ' ' .. size
    .. '\31' .. partition .. '\31' .. metadata
end

-- version, created, updated, expires, size, partition, metadata
local function fields(h)
  return string.match(h, '^(%d+) (%d+) (%d+) (%d*) (%d+)\31([^\31]*)\31(.*)$')
end

local function index(idx, kp, base, key, partition)
  local old = redis.call('HGET', kp, key)
  if old == partition then return end
  if old then redis.call('SREM', base .. 'p:' .. old, key) else redis.call('ZADD', idx, 0, key) end
  redis.call('SADD', base .. 'p:' .. partition, key)
  redis.call('HSET', kp, key, partition)
end

local function unindex(idx, kp, base, key)
  local old = redis.call('HGET', kp, key)
  if old then
    redis.call('SREM', base .. 'p:' .. old, key)
    redis.call('HDEL', kp, key)
  end
  return redis.call('ZREM', idx, key)
end
"""

# Python's repr(float): the shortest digits that read back as the same double, fixed notation
# for exponents -4..15, else d.ddde+XX. Trying 15 significant digits first is enough for
# normal doubles (their 15-digit rounding is the shortest form padded with zeros); subnormals
# have fewer significant bits, so they try every length from 1.
_PYFLOAT = r"""
local function pyfloat(x)
  local s
  local first = 14
  if math.abs(x) < 2.2250738585072014e-308 then first = 0 end
  for digits = first, 16 do
    s = string.format('%.' .. digits .. 'e', x)
    if tonumber(s) == x then break end
  end
  local sign, lead, frac, exp = string.match(s, '^(%-?)(%d)%.?(%d*)e([-+]%d+)$')
  local mantissa = string.gsub(lead .. frac, '0+$', '')
  if mantissa == '' then return sign .. '0.0' end
  local e = tonumber(exp)
  local n = #mantissa
  if e >= -4 and e < 16 then
    if e + 1 >= n then return sign .. mantissa .. string.rep('0', e + 1 - n) .. '.0' end
    if e >= 0 then
      return sign .. string.sub(mantissa, 1, e + 1) .. '.' .. string.sub(mantissa, e + 2)
    end
    return sign .. '0.' .. string.rep('0', -e - 1) .. mantissa
  end
  local out = string.sub(mantissa, 1, 1)
  if n > 1 then out = out .. '.' .. string.sub(mantissa, 2) end
  local magnitude = math.abs(e)
  local pad = ''
  if magnitude < 10 then pad = '0' end
  local esign = '+'
  if e < 0 then esign = '-' end
  return sign .. out .. 'e' .. esign .. pad .. fmt(magnitude)
end
"""

#: KEYS: entry, idx, kp. ARGV: key, value, partition, metadata, ttl_ms, mode ('' | 'absent' |
#: 'version'), expected version, base. Returns the new version, or 0 if the condition failed.
STORE = (
    _WRITE
    + _HELPERS
    + r"""
local entry, key, value, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[6]
local old = redis.call('HGET', entry, 'h')
local version, created
if old then
  if mode == 'absent' then return 0 end
  local n, c = fields(old)
  if mode == 'version' and tonumber(n) ~= tonumber(ARGV[7]) then return 0 end
  version, created = tonumber(n) + 1, c
elseif mode == 'version' then
  return 0
end
redis.call('HGET', KEYS[3], key)
local now = now_us()
local now_text = fmt(now)
if not old then version, created = 1, now_text end
local expires = expiry(now, ARGV[5])
redis.call('HSET', entry, 'v', value,
           'h', header(fmt(version), created, now_text, expires, #key + #value, ARGV[3], ARGV[4]))
if old or expires ~= '' then set_expiry(entry, expires) end
index(KEYS[2], KEYS[3], ARGV[8], key, ARGV[3])
return version
"""
)

#: Arguments per request in :data:`STORE_BATCH`.
STORE_BATCH_FIELDS = 5

#: Concurrent plain stores (no condition) coalesced into one call, applied in order, each with
#: its own reply. KEYS: idx, kp. ARGV: base, then per request key, value, partition, metadata,
#: ttl_ms. Returns per request its new version (an integer) or the error text (a string) of the
#: request that could not be applied.
#:
#: A single store fails on the server only where a key it must write holds another type
#: (``WRONGTYPE``): its entry or a partition set it joins or leaves. Those reads run first, under
#: ``pcall``, and a request that would fail is skipped (with that error) instead of aborting the
#: script halfway; the shared index keys are read with ``call`` first, so their failure fails the
#: whole batch before any write, as it would fail each store alone. Duplicates of one key apply
#: in request order, each reading the entry the previous one wrote.
STORE_BATCH = (
    _WRITE
    + _HELPERS
    + r"""
local base, n = ARGV[1], 5
local count = (#ARGV - 1) / n
redis.call('ZCARD', KEYS[1])
redis.call('HLEN', KEYS[2])
local function failure(reply)
  if type(reply) == 'table' and reply.err then return reply.err end
  return nil
end
local sets, bad = {}, {}
local function set_error(name)
  local set = base .. 'p:' .. name
  if sets[set] == nil then sets[set] = failure(redis.pcall('SCARD', set)) or false end
  return sets[set]
end
for i = 1, count do
  local at = 1 + (i - 1) * n
  local key = ARGV[at + 1]
  local err = failure(redis.pcall('HGET', base .. 'e:' .. key, 'h')) or set_error(ARGV[at + 3])
  if not err then
    local was = redis.call('HGET', KEYS[2], key)
    if was then err = set_error(was) end
  end
  if err then bad[i] = err end
end
local now = now_us()
local now_text = fmt(now)
local out = {}
for i = 1, count do
  if bad[i] then
    out[i] = bad[i]
  else
    local at = 1 + (i - 1) * n
    local key, value, partition = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    local entry = base .. 'e:' .. key
    local old = redis.call('HGET', entry, 'h')
    local version, created = 1, now_text
    if old then
      local v, c = fields(old)
      version, created = tonumber(v) + 1, c
    end
    local expires = expiry(now, ARGV[at + 5])
    redis.call('HSET', entry, 'v', value, 'h',
               header(fmt(version), created, now_text, expires, #key + #value, partition,
                      ARGV[at + 4]))
    if old or expires ~= '' then set_expiry(entry, expires) end
    index(KEYS[1], KEYS[2], base, key, partition)
    out[i] = version
  end
end
return out
"""
)

#: KEYS: idx, kp, the partition's set. ARGV: base, partition, ttl_ms, and the batch as one string
#: ``key NUL value NUL key NUL value...`` (neither keys nor JSON text can hold NUL; one argument
#: instead of 20,000 saves the client most of its packing work). All reads first, then all
#: writes: any error aborts before anything changed.
STORE_MANY = (
    _WRITE
    + _HELPERS
    + r"""
local base, partition, packed = ARGV[1], ARGV[2], ARGV[4]
local keys, values, count, pos = {}, {}, 0, 1
while pos <= #packed do
  local cut = string.find(packed, '\0', pos, true)
  local stop = string.find(packed, '\0', cut + 1, true) or #packed + 1
  count = count + 1
  keys[count] = string.sub(packed, pos, cut - 1)
  values[count] = string.sub(packed, cut + 1, stop - 1)
  pos = stop + 1
end
redis.call('ZCARD', KEYS[1])
redis.call('HLEN', KEYS[2])
redis.call('SCARD', KEYS[3])
local entries, olds = {}, {}
for i = 1, count do
  entries[i] = base .. 'e:' .. keys[i]
  olds[i] = redis.call('HGET', entries[i], 'h')
end
local now = now_us()
local now_text, expires = fmt(now), expiry(now, ARGV[3])
for i = 1, count do
  local old, key, value = olds[i], keys[i], values[i]
  -- Versions and sizes stay far below 1e14, where tostring is exact.
  local version, created = '1', now_text
  if old then
    local n, c = fields(old)
    version, created = tostring(tonumber(n) + 1), c
  end
  redis.call('HSET', entries[i], 'v', value,
             'h', header(version, created, now_text, expires, #key + #value, partition, '{}'))
  if old or expires ~= '' then set_expiry(entries[i], expires) end
end
-- Index in chunks of 1000 (variadic ZADD/SADD/HSET; Lua's unpack has a stack limit).
for first = 1, count, 1000 do
  local chunk = {unpack(keys, first, math.min(first + 999, count))}
  local labels = redis.call('HMGET', KEYS[2], unpack(chunk))
  local scored, members, labelled = {}, {}, {}
  for j, key in ipairs(chunk) do
    local old = labels[j]
    if old ~= partition then
      if old then
        redis.call('SREM', base .. 'p:' .. old, key)
      else
        scored[#scored + 1] = 0
        scored[#scored + 1] = key
      end
      members[#members + 1] = key
      labelled[#labelled + 1] = key
      labelled[#labelled + 1] = partition
    end
  end
  if #scored > 0 then redis.call('ZADD', KEYS[1], unpack(scored)) end
  if #members > 0 then
    redis.call('SADD', KEYS[3], unpack(members))
    redis.call('HSET', KEYS[2], unpack(labelled))
  end
end
return count
"""
)

#: KEYS: entry, idx, kp. ARGV: key, delta, '1' if delta is an int, initial JSON, ttl_ms, base.
#: Returns {1, new JSON}, {0, ''} if the live value is not a number, {-1, ''} on overflow.
INCREMENT = (
    _WRITE
    + _HELPERS
    + _PYFLOAT
    + r"""
local entry, key, delta = KEYS[1], ARGV[1], ARGV[2]
local row = redis.call('HMGET', entry, 'v', 'h')
redis.call('HGET', KEYS[3], key)
local now = now_us()
local now_text = fmt(now)
local expires = expiry(now, ARGV[5])
local current = row[1]
if not current then
  local initial = ARGV[4]
  redis.call('HSET', entry, 'v', initial,
             'h', header('1', now_text, now_text, expires, #key + #initial, 'default', '{}'))
  if expires ~= '' then set_expiry(entry, expires) end
  index(KEYS[2], KEYS[3], ARGV[6], key, 'default')
  return {1, initial}
end
-- A JSON number, and only a number, starts with '-' or a digit.
local first = string.byte(current, 1)
if not (first == 45 or (first >= 48 and first <= 57)) then return {0, ''} end
local new
if ARGV[3] == '1' and string.find(current, '^%-?%d+$') then
  -- HINCRBY adds 64-bit integers exactly (Lua numbers are doubles) and refuses overflow.
  local added = redis.pcall('HINCRBY', entry, 'v', delta)
  if type(added) == 'table' and added.err then return {-1, ''} end
  new = redis.call('HGET', entry, 'v')
else
  local sum = tonumber(current) + tonumber(delta)
  if sum ~= sum or sum == math.huge or sum == -math.huge then return {-1, ''} end
  new = pyfloat(sum)
  redis.call('HSET', entry, 'v', new)
end
local n, c, _, x, _, p, m = fields(row[2])
-- ttl=None keeps the counter's expiry (a rate-limit window keeps running).
if expires == '' then expires = x end
local h = header(fmt(tonumber(n) + 1), c, now_text, expires, #key + #new, p, m)
redis.call('HSET', entry, 'h', h)
if ARGV[5] ~= '' then set_expiry(entry, expires) end
return {1, new}
"""
)

#: KEYS: entry. ARGV: ttl_ms. Returns 1 if a live entry got the new expiry, else 0.
EXPIRE = (
    _WRITE
    + _HELPERS
    + r"""
local h = redis.call('HGET', KEYS[1], 'h')
if not h then return 0 end
local n, c, _, _, size, p, m = fields(h)
local now = now_us()
local expires = expiry(now, ARGV[1])
redis.call('HSET', KEYS[1], 'h', header(fmt(tonumber(n) + 1), c, fmt(now), expires, size, p, m))
redis.call('PEXPIREAT', KEYS[1], expires)
return 1
"""
)

#: KEYS: entry, idx, kp. ARGV: key, base. Returns 1 if a live entry was deleted.
DELETE = (
    _WRITE
    + _HELPERS
    + r"""
redis.call('HGET', KEYS[3], ARGV[1])
local deleted = redis.call('DEL', KEYS[1])
-- Like the SQL backend, an expired leftover stays counted as expired until cleanup_expired.
if deleted == 1 then unindex(KEYS[2], KEYS[3], ARGV[2], ARGV[1]) end
return deleted
"""
)

#: KEYS: entries. Returns their value JSON (nil where there is no live entry).
VALUES = (
    _READ
    + r"""
local out = {}
for i, entry in ipairs(KEYS) do out[i] = redis.call('HGET', entry, 'v') end
return out
"""
)

# The page scripts walk idx in [min, max) with ZRANGEBYLEX ... LIMIT 0 count and return the last
# member they saw (the next page starts after it) and how many they saw (fewer than count: done).
_PAGE = r"""
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local last = members[#members] or ''
local entries = ARGV[1] .. 'e:'
"""

#: KEYS: idx. ARGV: base, min, max, count. Returns {last, seen, live keys}.
LIVE_KEYS_PAGE = (
    _READ
    + _PAGE
    + r"""
local live = {}
for _, key in ipairs(members) do
  if redis.call('EXISTS', entries .. key) == 1 then live[#live + 1] = key end
end
return {last, #members, live}
"""
)

#: KEYS: idx. ARGV: base, min, max, count. Returns {last, seen, key, value JSON, ...} (live only).
RANGE_VALUES_PAGE = (
    _READ
    + _PAGE
    + r"""
local out = {last, #members}
for _, key in ipairs(members) do
  local value = redis.call('HGET', entries .. key, 'v')
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
"""
)

#: KEYS: idx. ARGV: base, min, max, count. Returns {last, seen, key, value JSON, header,
#: remaining ms (PTTL: -1 = no expiry), ...} for the live entries of the page.
SCAN_PAGE = (
    _READ
    + _PAGE
    + r"""
local out = {last, #members}
for _, key in ipairs(members) do
  local entry = entries .. key
  local fields = redis.call('HMGET', entry, 'v', 'h')
  if fields[1] and fields[2] then
    out[#out + 1] = key
    out[#out + 1] = fields[1]
    out[#out + 1] = fields[2]
    out[#out + 1] = redis.call('PTTL', entry)
  end
end
return out
"""
)

#: KEYS: idx. ARGV: base, min, max, count.
#: Returns {last, seen, live, expired, size bytes, {partition, count, ...}}.
STATS_PAGE = (
    _READ
    + _PAGE
    + r"""
local live, dead, size = 0, 0, 0
local partitions = {}
for _, key in ipairs(members) do
  local h = redis.call('HGET', entries .. key, 'h')
  if h then
    local bytes, label = string.match(h, '^%d+ %d+ %d+ %d* (%d+)\31([^\31]*)\31')
    live = live + 1
    size = size + tonumber(bytes)
    partitions[label] = (partitions[label] or 0) + 1
  else
    dead = dead + 1
  end
end
local flat = {}
for name, count in pairs(partitions) do
  flat[#flat + 1] = name
  flat[#flat + 1] = count
end
return {last, #members, live, dead, size, flat}
"""
)

#: KEYS: idx, kp. ARGV: base, min, max, count. Returns {last, seen, purged}.
CLEANUP_PAGE = (
    _WRITE
    + _HELPERS
    + _PAGE
    + r"""
redis.call('HLEN', KEYS[2])
local purged = 0
for _, key in ipairs(members) do
  if redis.call('EXISTS', entries .. key) == 0 then
    purged = purged + unindex(KEYS[1], KEYS[2], ARGV[1], key)
  end
end
return {last, #members, purged}
"""
)

#: KEYS: idx, kp, the partition's set. ARGV: base, partition, cursor, count, namespace.
#: One SSCAN step: deletes the partition's live entries in the namespace, purges dead members.
#: Returns {next cursor, live entries deleted}.
CLEAR_PARTITION_PAGE = (
    _WRITE
    + _HELPERS
    + r"""
local base, partition, namespace = ARGV[1], ARGV[2], ARGV[5]
redis.call('ZCARD', KEYS[1])
redis.call('HLEN', KEYS[2])
local step = redis.call('SSCAN', KEYS[3], ARGV[3], 'COUNT', tonumber(ARGV[4]))
local deleted = 0
for _, key in ipairs(step[2]) do
  if string.sub(key, 1, #namespace) == namespace then
    local entry = base .. 'e:' .. key
    local h = redis.call('HGET', entry, 'h')
    local label = h and string.match(h, '\31([^\31]*)\31')
    if label == partition then
      deleted = deleted + redis.call('DEL', entry)
      unindex(KEYS[1], KEYS[2], base, key)
    elseif not label then
      unindex(KEYS[1], KEYS[2], base, key)
    elseif redis.call('HGET', KEYS[2], key) ~= partition then
      redis.call('SREM', KEYS[3], key)
    end
  end
end
return {step[1], deleted}
"""
)
