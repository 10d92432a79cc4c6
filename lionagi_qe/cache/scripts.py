"""The Lua scripts of the cache tier (the record format is in :mod:`lionagi_qe.cache.records`).

Every Redis key the tier writes starts with its prefix ``P``:

- ``P gen`` — the cache *generation* (a counter; missing = 0). A record counts only if it was
  written under the current generation; bumping it (``INCR``) disowns every record at once.
- ``P server`` — the ``run_id`` of the Redis server the records were written to. Every new
  connection runs :data:`SERVER_CHECK` before its first command: a different ``run_id`` means a
  restart or failover (whose persisted data may lack deletes that were confirmed), so the
  generation is bumped then and there.
- ``P e: <key>`` — the record of one memory key: a value, a cached absence or a lease.

A hit needs no script (``MGET`` of the generation and the record). When that finds nothing
usable, :data:`LOOKUP` looks again and takes a *lease* in the same atomic step. Writers commit in
the database, then ``UNLINK`` the records they touched, which removes any lease with them, so a
reader that read the database before the commit can no longer fill: :data:`FILL` writes only
over its own lease, under the generation the lease was taken in.
"""

from __future__ import annotations

__all__ = [
    "ABSENT",
    "BUSY",
    "FILL",
    "FILL_FIELDS_PER_KEY",
    "HIT",
    "LEASED",
    "LOOKUP",
    "MODE_ENTRY",
    "MODE_EXISTS",
    "MODE_TTL",
    "MODE_VALUE",
    "SERVER_CHECK",
]

#: LOOKUP reply codes (first element of each key's reply).
ABSENT = 0
HIT = 1
LEASED = 2
BUSY = 3

#: What a read needs from a hit: the value; the whole entry; the ms left; only whether it exists.
MODE_VALUE = "v"
MODE_ENTRY = "e"
MODE_TTL = "t"
MODE_EXISTS = "x"

#: Look up records, taking a lease on each that has nothing usable.
#:
#: KEYS[1] generation, KEYS[2..] records. ARGV[1] mode ('t': a hit returns the ms the entry has
#: left, -1 for none; otherwise the record itself), ARGV[2] lease token, ARGV[3] lease lifetime
#: (ms), ARGV[4] a token the caller may take the lease over from ('' for none: a waiter that saw
#: the same lease for its whole wait takes it over, so a crashed filler costs one wait).
#:
#: Per key: {1, record or ms} hit, {0} cached absence, {2} leased to the caller, {3, token}
#: leased to another reader.
LOOKUP = """
local gen = redis.call('GET', KEYS[1]) or '0'
local now = nil
local out = {}
for i = 2, #KEYS do
  local record = redis.call('GET', KEYS[i])
  local reply = nil
  if record then
    local kind = string.sub(record, 1, 1)
    local gen_end = string.find(record, ':', 2, true)
    if gen_end and string.sub(record, 2, gen_end - 1) == gen then
      if kind == 'A' then
        reply = {0}
      elseif kind == 'V' then
        if ARGV[1] == 't' then
          local deadline_end = string.find(record, ':', gen_end + 1, true)
          local deadline = string.sub(record, gen_end + 1, deadline_end - 1)
          if deadline == '' then
            reply = {1, -1}
          else
            if not now then
              local t = redis.call('TIME')
              now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            end
            reply = {1, math.max(tonumber(deadline) - now, 0)}
          end
        else
          reply = {1, record}
        end
      elseif kind == 'L' then
        local holder = string.sub(record, gen_end + 1)
        if holder ~= ARGV[4] then
          reply = {3, holder}
        end
      end
    end
  end
  if not reply then
    redis.call('SET', KEYS[i], 'L' .. gen .. ':' .. ARGV[2], 'PX', ARGV[3])
    reply = {2}
  end
  out[#out + 1] = reply
end
return out
"""

#: Arguments per record in :data:`FILL`.
FILL_FIELDS_PER_KEY = 3

#: Fill records leased under one token. Returns how many were written.
#:
#: KEYS[1] generation, KEYS[2..] records. ARGV[1] lease token, ARGV[2] cache lifetime cap (ms),
#: then 3 per record: the ms the entry has left (-1: no expiry, -2: no entry), the header, the
#: value's JSON. A record is written only if it still holds this lease under the current
#: generation: an invalidation (UNLINK) or a generation bump since the lease makes the fill a
#: no-op. An entry with no time left gives its lease back instead of being cached.
FILL = """
local gen = redis.call('GET', KEYS[1]) or '0'
local lease = 'L' .. gen .. ':' .. ARGV[1]
local cap = tonumber(ARGV[2])
local now = nil
local filled = 0
for i = 2, #KEYS do
  local base = 3 + (i - 2) * 3
  if redis.call('GET', KEYS[i]) == lease then
    local left = tonumber(ARGV[base])
    local ttl = cap
    if left >= 0 and left < ttl then
      ttl = left
    end
    if ttl <= 0 then
      redis.call('DEL', KEYS[i])
    elseif left == -2 then
      redis.call('SET', KEYS[i], 'A' .. gen .. ':', 'PX', ttl)
      filled = filled + 1
    else
      local deadline = ''
      if left >= 0 then
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        deadline = string.format('%.0f', now + left)
      end
      local header = ARGV[base + 1]
      redis.call('SET', KEYS[i],
        'V' .. gen .. ':' .. deadline .. ':' .. #header .. ':' .. header .. ARGV[base + 2],
        'PX', ttl)
      filled = filled + 1
    end
  end
end
return filled
"""

#: Run on every new connection before its first command. KEYS[1] server key, KEYS[2] generation.
#: Returns 1 if the server changed since the records were written (and the generation was bumped).
#: A missing server key means nothing of ours survived (a fresh or emptied server): no bump.
SERVER_CHECK = """
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local seen = redis.call('GET', KEYS[1])
if seen == run_id then
  return 0
end
redis.call('SET', KEYS[1], run_id)
if seen then
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
"""
