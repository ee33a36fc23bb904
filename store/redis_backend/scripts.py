"""The Lua scripts of the Redis store: every write is one of them, atomic with its lost-store
check (the marker), its audit entry, the store's version and the change notification."""

from __future__ import annotations

AUDIT_KEPT = 10_000  # entries; older ones are trimmed away

PUT_POLICY = """
local cur = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
local marker = redis.call('GET', KEYS[4])
if ARGV[9] ~= '' and marker ~= ARGV[9] then return {'lost', cur} end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= cur then return {'conflict', cur} end
if cur > 0 and redis.call('HGET', KEYS[2], 'text') == ARGV[1] then return {'same', cur} end
local v = cur + 1
redis.call('HSET', KEYS[2], 'text', ARGV[1], 'version', v, 'updated_at', ARGV[4], 'updated_by', ARGV[2])
local g = redis.call('INCR', KEYS[1])
if not marker then redis.call('SET', KEYS[4], ARGV[10]) end
local before = ARGV[6]
if before == '' and cur > 0 then before = 'version ' .. cur end
local after = ARGV[7]
if after == '' then after = 'version ' .. v end
redis.call('LPUSH', KEYS[3], cjson.encode({at=tonumber(ARGV[4]), actor=ARGV[2], action=ARGV[5],
                                            before=before, after=after}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
redis.call('PUBLISH', KEYS[5], ARGV[11] .. ' ' .. g)
return {'ok', v, g, redis.call('GET', KEYS[4])}
"""

# overrides: ARGV = op (add|cancel), id, json (add), now, audit json (add) or actor (cancel),
# audit cap, known marker, new marker, instance id
OVERRIDE = """
local marker = redis.call('GET', KEYS[4])
if ARGV[7] ~= '' and marker ~= ARGV[7] then return {'lost'} end
local now = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[2])
local last = 0
for i = 1, #all, 2 do
  local until_ = cjson.decode(all[i + 1])['until']
  if until_ <= now then redis.call('HDEL', KEYS[2], all[i]) elseif until_ > last then last = until_ end
end
local found = redis.call('HGET', KEYS[2], ARGV[2])
local entry
if ARGV[1] == 'add' then
  if found then return {'exists'} end
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  local until_ = cjson.decode(ARGV[3])['until']
  if until_ > last then last = until_ end
  entry = ARGV[5]
else
  if not found then return {'missing'} end
  redis.call('HDEL', KEYS[2], ARGV[2])
  entry = ARGV[5]
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIREAT', KEYS[2], math.ceil(last * 1000) + 60000)
end
local g = redis.call('INCR', KEYS[1])
if not marker then redis.call('SET', KEYS[4], ARGV[8]) end
redis.call('LPUSH', KEYS[3], entry)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('PUBLISH', KEYS[5], ARGV[9] .. ' ' .. g)
return {'ok', g, found or '', redis.call('GET', KEYS[4])}
"""

# write an instance's state back into a store that lost it (SPEC §7): only when the store has no
# marker, or holds a lower version than ours whatever its marker; a store at our version or
# higher (a tie included) is left alone and the caller adopts it, so instances converge.
# Replaces the policy, the overrides, the users and the tokens (their records and index sets).
# ARGV = marker, version, policy text ('' for none), policy version, updated_at, updated_by,
#        overrides json list, audit entry json, instance id, users json list, tokens json list,
#        key prefix
# returns {1} when written, else {0, the stored version, the stored marker}
RESTORE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local marker = redis.call('GET', KEYS[4])
if marker and cur >= tonumber(ARGV[2]) then return {0, cur, marker} end
redis.call('DEL', KEYS[2], KEYS[3])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'text', ARGV[3], 'version', ARGV[4], 'updated_at', ARGV[5],
             'updated_by', ARGV[6])
end
local last = 0
for _, item in ipairs(cjson.decode(ARGV[7])) do
  redis.call('HSET', KEYS[3], item['id'], item['json'])
  if item['until'] > last then last = item['until'] end
end
if last > 0 then redis.call('PEXPIREAT', KEYS[3], math.ceil(last * 1000) + 60000) end
for index, records in pairs({[KEYS[7]] = {ARGV[10], 'user:'}, [KEYS[8]] = {ARGV[11], 'token:'}}) do
  for _, name in ipairs(redis.call('SMEMBERS', index)) do
    redis.call('DEL', ARGV[12] .. records[2] .. name)
  end
  redis.call('DEL', index)
  for _, item in ipairs(cjson.decode(records[1])) do
    redis.call('SET', ARGV[12] .. records[2] .. item['name'], item['json'])
    redis.call('SADD', index, item['name'])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[5], ARGV[8])
redis.call('PUBLISH', KEYS[6], ARGV[9] .. ' ' .. ARGV[2])
return {1}
"""

# a dashboard account record (a user, a token): the record, its name in its index set, the
# audit entry; it moves `version`, so every instance's watcher reads the accounts again and
# holds them for a rebuild. ARGV = known marker, new marker, record json, name, audit json,
# audit cap, instance id
RECORD = """
local marker = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and marker ~= ARGV[1] then return {'lost'} end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
local g = redis.call('INCR', KEYS[5])
if not marker then redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[6], ARGV[7] .. ' ' .. g)
return {'ok', g, redis.call('GET', KEYS[1])}
"""

# removing a user: only the record read (ARGV[2]) goes, with its name in the index and the audit
# entry; moves `version` like RECORD. ARGV = known marker, record json read, name, audit json,
# audit cap, instance id
REMOVE_RECORD = """
local marker = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and marker ~= ARGV[1] then return {'lost'} end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'changed'} end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
local g = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', KEYS[6], ARGV[6] .. ' ' .. g)
return {'ok', g}
"""

# INCR and PEXPIRE in one call. ARGV[n] is the time to live after the n-th failure; past the
# last one given, the last one holds (the delays stop growing at their cap).
FAILURE_WINDOWS = 16

COUNT_FAILURE = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[math.min(count, #ARGV)])
return count
"""

# devices, one record a key (device:ID, JSON) with their indexes: `devices` (a sorted set of
# the ids, for paging in order), `devices:token` (digest -> id), `devices:address` (address ->
# id), `devices:class:CLASS` (a set of ids), and `devices:log` (id -> the sequence of its last
# change, removals included) under `devices:seq`, so a watcher reads only what changed.
# Every check is made before anything is written: nothing is stored unless all of it can be.
# KEYS = version, marker, audit, changes, devices:seq, devices:log, devices, devices:token,
#        devices:address
# ARGV = known marker, new marker, mode (add|update|set), puts json [{id, class, token,
#        addresses, json}], removed ids json, audit json, audit cap, instance id, key prefix,
#        forget ('1': an erasure leaves no trace of the removed ids, even in the log; readers
#        behind read the devices whole)
CHANGE_DEVICES = """
local marker = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and marker ~= ARGV[1] then return {'lost'} end
local prefix = ARGV[9]
local puts = cjson.decode(ARGV[4])
local removes = cjson.decode(ARGV[5])
local gone = {}
for _, id in ipairs(removes) do
  if redis.call('EXISTS', prefix .. 'device:' .. id) == 0 then
    return {'conflict', "no device '" .. id .. "'"}
  end
  gone[id] = true
end
local tokens, addresses = {}, {}
for _, d in ipairs(puts) do
  local exists = redis.call('EXISTS', prefix .. 'device:' .. d.id) == 1 and not gone[d.id]
  if ARGV[3] == 'add' and exists then
    return {'conflict', "device '" .. d.id .. "' exists already"}
  end
  if ARGV[3] == 'update' and not exists then return {'conflict', "no device '" .. d.id .. "'"} end
  if d.token ~= '' then
    local owner = redis.call('HGET', KEYS[8], d.token) or tokens[d.token]
    if owner and owner ~= d.id and not gone[owner] then
      return {'conflict', "that token belongs to device '" .. owner .. "'"}
    end
    tokens[d.token] = d.id
  end
  for _, a in ipairs(d.addresses) do
    local owner = redis.call('HGET', KEYS[9], a) or addresses[a]
    if owner and owner ~= d.id and not gone[owner] then
      return {'conflict', 'address ' .. a .. " already belongs to device '" .. owner .. "'"}
    end
    addresses[a] = d.id
  end
end
local seq = redis.call('INCR', KEYS[5])
local function unindex(id)
  local old = redis.call('GET', prefix .. 'device:' .. id)
  if not old then return end
  old = cjson.decode(old)
  if type(old.token_sha256) == 'string' and redis.call('HGET', KEYS[8], old.token_sha256) == id then
    redis.call('HDEL', KEYS[8], old.token_sha256)
  end
  for _, a in ipairs(old.addresses) do
    if redis.call('HGET', KEYS[9], a) == id then redis.call('HDEL', KEYS[9], a) end
  end
  redis.call('SREM', prefix .. 'devices:class:' .. old.class, id)
end
for _, id in ipairs(removes) do
  unindex(id)
  redis.call('DEL', prefix .. 'device:' .. id)
  redis.call('ZREM', KEYS[7], id)
  if ARGV[10] == '1' then
    redis.call('ZREM', KEYS[6], id)
    redis.call('SET', prefix .. 'devices:floor', seq)
  else
    redis.call('ZADD', KEYS[6], seq, id)
  end
end
for _, d in ipairs(puts) do
  unindex(d.id)
  redis.call('SET', prefix .. 'device:' .. d.id, d.json)
  redis.call('ZADD', KEYS[7], 0, d.id)
  if d.token ~= '' then redis.call('HSET', KEYS[8], d.token, d.id) end
  for _, a in ipairs(d.addresses) do redis.call('HSET', KEYS[9], a, d.id) end
  redis.call('SADD', prefix .. 'devices:class:' .. d.class, d.id)
  redis.call('ZADD', KEYS[6], seq, d.id)
end
redis.call('LPUSH', KEYS[3], ARGV[6])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
local g = redis.call('INCR', KEYS[1])
if not marker then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('PUBLISH', KEYS[4], ARGV[8] .. ' ' .. g)
return {'ok', seq, g, redis.call('GET', KEYS[2])}
"""

# a lost store's devices written back (after RESTORE): every device key and index replaced
# by the instance's devices, the sequence set to the instance's; the log starts again from
# there (`devices:floor`), so a watcher behind it reads the devices whole.
# KEYS = devices:seq, devices:log, devices, devices:token, devices:address, devices:floor
# ARGV = key prefix, sequence, devices json [{id, class, token, addresses, json}]
RESTORE_DEVICES = """
local prefix = ARGV[1]
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local old = redis.call('GET', prefix .. 'device:' .. id)
  if old then redis.call('DEL', prefix .. 'devices:class:' .. cjson.decode(old).class) end
  redis.call('DEL', prefix .. 'device:' .. id)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
for _, d in ipairs(cjson.decode(ARGV[3])) do
  redis.call('SET', prefix .. 'device:' .. d.id, d.json)
  redis.call('ZADD', KEYS[3], 0, d.id)
  if d.token ~= '' then redis.call('HSET', KEYS[4], d.token, d.id) end
  for _, a in ipairs(d.addresses) do redis.call('HSET', KEYS[5], a, d.id) end
  redis.call('SADD', prefix .. 'devices:class:' .. d.class, d.id)
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[6], ARGV[2])
return 1
"""
