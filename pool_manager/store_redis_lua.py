"""The Redis store's Lua scripts: each one decision that Redis runs atomically against all other clients.

store_redis.py registers them and describes the keys they use (all under the store's prefix, passed in KEYS);
each script opens with a comment naming its KEYS and ARGV."""

PLACE = """
-- KEYS: node, cap, resv, nleases, lease, active, token, gresv, tusage
-- ARGV: lease_id, expires_at, token_hash, doc, node_id, allocs, pool overcommit ratio, guaranteed ('1' or '0'),
--       tenant, tenant VRAM limit ('' none), tenant lease limit ('' none), the lease's quota bytes, quota prefix,
--       then pairs of gpu, bytes. The room rule is store.room_on's, the quota rule store.quota_refusal's.
if redis.call('EXISTS', KEYS[5]) == 1 then return 'lease id ' .. ARGV[1] .. ' already exists' end
local tvram = tonumber(redis.call('HGET', KEYS[9], ARGV[9] .. ':vram') or '0')
local tn = tonumber(redis.call('HGET', KEYS[9], ARGV[9] .. ':n') or '0')
if ARGV[11] ~= '' and tn + 1 > tonumber(ARGV[11]) then
  return ARGV[13] .. 'tenant ' .. ARGV[9] .. ' holds ' .. tn .. ' of its ' .. ARGV[11] .. ' active leases'
end
if ARGV[10] ~= '' and tvram + tonumber(ARGV[12]) > tonumber(ARGV[10]) then
  return ARGV[13] .. 'tenant ' .. ARGV[9] .. ' has ' .. tvram .. ' of its ' .. ARGV[10] ..
         ' VRAM bytes booked; ' .. ARGV[12] .. ' more do not fit'
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'node ' .. ARGV[5] .. ' is unknown' end
if state ~= 'up' then return 'node ' .. ARGV[5] .. ' is ' .. state end
local ratio = tonumber(redis.call('HGET', KEYS[1], 'overcommit') or '0') or 0
if ratio <= 0 then ratio = tonumber(ARGV[7]) end
local guaranteed = ARGV[8] == '1'
for i = 14, #ARGV, 2 do
  local field = ARGV[5] .. ':' .. ARGV[i]
  local cap = redis.call('HGET', KEYS[2], field)
  if not cap then return 'node ' .. ARGV[5] .. ' has no GPU ' .. ARGV[i] end
  cap = tonumber(cap)
  local booked = tonumber(redis.call('HGET', KEYS[3], field) or '0')
  local room = cap - booked
  if not guaranteed then
    room = math.min(math.floor(cap * ratio) - booked, cap - tonumber(redis.call('HGET', KEYS[8], field) or '0'))
  end
  if tonumber(ARGV[i + 1]) > room then
    return 'GPU ' .. ARGV[i] .. ' of node ' .. ARGV[5] .. ' no longer has room'
  end
end
for i = 14, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[5] .. ':' .. ARGV[i], ARGV[i + 1])
  if guaranteed then redis.call('HINCRBY', KEYS[8], ARGV[5] .. ':' .. ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[5], 'state', 'active', 'node', ARGV[5], 'allocs', ARGV[6], 'expires_at', ARGV[2],
           'doc', ARGV[4], 'token', ARGV[3], 'guaranteed', ARGV[8], 'tenant', ARGV[9], 'tquota', ARGV[12])
redis.call('HINCRBY', KEYS[9], ARGV[9] .. ':vram', ARGV[12])
redis.call('HINCRBY', KEYS[9], ARGV[9] .. ':n', 1)
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[7], ARGV[1])
return ''
"""

END = """
-- KEYS: lease, active, ended, resv, gresv, tusage ; ARGV: lease_id, state, reason, now, retention_s, prefix
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return -1 end
if st ~= 'active' then return 0 end
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then
  redis.call('HINCRBY', KEYS[6], tenant .. ':vram', '-' .. (redis.call('HGET', KEYS[1], 'tquota') or '0'))
  redis.call('HINCRBY', KEYS[6], tenant .. ':n', -1)
end
local node = redis.call('HGET', KEYS[1], 'node')
local guaranteed = redis.call('HGET', KEYS[1], 'guaranteed') == '1'
for g, b in string.gmatch(redis.call('HGET', KEYS[1], 'allocs'), '(%d+):(%d+)') do
  local field = node .. ':' .. g
  if redis.call('HINCRBY', KEYS[4], field, '-' .. b) == 0 then redis.call('HDEL', KEYS[4], field) end
  if guaranteed and redis.call('HINCRBY', KEYS[5], field, '-' .. b) == 0 then redis.call('HDEL', KEYS[5], field) end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'end_reason', ARGV[3], 'ended_at', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[6] .. 'nleases:' .. node, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local tok = redis.call('HGET', KEYS[1], 'token')
if tok then redis.call('EXPIRE', ARGV[6] .. 'token:' .. tok, ARGV[5]) end
return 1
"""

RENEW = """
-- KEYS: lease, active ; ARGV: lease_id, expires_at
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return -1 end
if st ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

HEARTBEAT = """
-- KEYS: node, states, hbs ; ARGV: now, gpus, sessions, draining, node_id
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'down' then return 0 end
redis.call('HSET', KEYS[1], 'hb', ARGV[1], 'gpus', ARGV[2], 'sessions', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[1])
if ARGV[4] == '1' and st == 'up' then
  redis.call('HSET', KEYS[1], 'state', 'draining', 'reason', 'the node reported that it is draining')
  redis.call('HSET', KEYS[2], ARGV[5], 'draining')
end
return 1
"""

MARK_DOWN = """
-- KEYS: node, nleases, states ; ARGV: reason, stale_before ('' = unconditionally), node_id
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'down' then return false end
if ARGV[2] ~= '' then
  local hb = tonumber(redis.call('HGET', KEYS[1], 'hb') or '0')
  if hb >= tonumber(ARGV[2]) then return false end
end
redis.call('HSET', KEYS[1], 'state', 'down', 'reason', ARGV[1], 'sessions', '[]')
redis.call('HSET', KEYS[3], ARGV[3], 'down')
return {1, redis.call('SMEMBERS', KEYS[2])}
"""

DRAIN = """
-- KEYS: node, states ; ARGV: reason, node_id
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 0 end
if st == 'up' then
  redis.call('HSET', KEYS[1], 'state', 'draining', 'reason', ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[2], 'draining')
end
return 1
"""

UNDRAIN = """
-- KEYS: node, states ; ARGV: node_id
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 0 end
if st == 'draining' then
  redis.call('HSET', KEYS[1], 'state', 'up')
  redis.call('HDEL', KEYS[1], 'reason')
  redis.call('HSET', KEYS[2], ARGV[1], 'up')
end
return 1
"""

REGISTER = """
-- KEYS: nodes, node, states, cap, endpoints, generation, overcommit, hbs
-- ARGV: node_id, hb, info, endpoints, gpus, capidx, overcommit, then pairs of gpu, bytes
local old = redis.call('HGET', KEYS[2], 'capidx')
if old then
  for _, g in ipairs(cjson.decode(old)) do redis.call('HDEL', KEYS[4], ARGV[1] .. ':' .. tostring(g)) end
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'up', 'reason', '', 'hb', ARGV[2], 'info', ARGV[3], 'gpus', ARGV[5],
           'sessions', '[]', 'capidx', ARGV[6], 'overcommit', ARGV[7])
redis.call('HSET', KEYS[3], ARGV[1], 'up')
redis.call('HSET', KEYS[8], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[7])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[1] .. ':' .. ARGV[i], ARGV[i + 1]) end
redis.call('INCR', KEYS[6])
return 1
"""


SET_CREDENTIAL = """
-- KEYS: node, nodecreds ; ARGV: node_id, sha256 hex
local st = redis.call('HGET', KEYS[1], 'state')
if st and st ~= 'down' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

MOVE = """
-- KEYS: lease, cap, resv, gresv ; ARGV: lease_id, to node ('' = none), doc, allocs, pool ratio, prefix,
--       then pairs of gpu, bytes (none when to node is ''). The room rule is store.room_on's (as PLACE).
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'lease ' .. ARGV[1] .. ' is unknown' end
if st ~= 'active' then return 'lease ' .. ARGV[1] .. ' has ended (' .. st .. ')' end
local old = redis.call('HGET', KEYS[1], 'node')
local guaranteed = redis.call('HGET', KEYS[1], 'guaranteed') == '1'
local to = ARGV[2]
if to == old then
  redis.call('HSET', KEYS[1], 'doc', ARGV[3])
  return ''
end
if to ~= '' then
  local state = redis.call('HGET', ARGV[6] .. 'node:' .. to, 'state')
  if not state then return 'node ' .. to .. ' is unknown' end
  if state ~= 'up' then return 'node ' .. to .. ' is ' .. state end
  local ratio = tonumber(redis.call('HGET', ARGV[6] .. 'node:' .. to, 'overcommit') or '0') or 0
  if ratio <= 0 then ratio = tonumber(ARGV[5]) end
  for i = 7, #ARGV, 2 do
    local field = to .. ':' .. ARGV[i]
    local cap = redis.call('HGET', KEYS[2], field)
    if not cap then return 'node ' .. to .. ' has no GPU ' .. ARGV[i] end
    cap = tonumber(cap)
    local booked = tonumber(redis.call('HGET', KEYS[3], field) or '0')
    local room = cap - booked
    if not guaranteed then
      room = math.min(math.floor(cap * ratio) - booked, cap - tonumber(redis.call('HGET', KEYS[4], field) or '0'))
    end
    if tonumber(ARGV[i + 1]) > room then return 'GPU ' .. ARGV[i] .. ' of node ' .. to .. ' has no room' end
  end
end
for g, b in string.gmatch(redis.call('HGET', KEYS[1], 'allocs') or '', '(%d+):(%d+)') do
  local field = old .. ':' .. g
  if redis.call('HINCRBY', KEYS[3], field, '-' .. b) == 0 then redis.call('HDEL', KEYS[3], field) end
  if guaranteed and redis.call('HINCRBY', KEYS[4], field, '-' .. b) == 0 then redis.call('HDEL', KEYS[4], field) end
end
redis.call('SREM', ARGV[6] .. 'nleases:' .. old, ARGV[1])
for i = 7, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], to .. ':' .. ARGV[i], ARGV[i + 1])
  if guaranteed then redis.call('HINCRBY', KEYS[4], to .. ':' .. ARGV[i], ARGV[i + 1]) end
end
if to ~= '' then redis.call('SADD', ARGV[6] .. 'nleases:' .. to, ARGV[1]) end
redis.call('HSET', KEYS[1], 'node', to, 'allocs', ARGV[4], 'doc', ARGV[3])
return ''
"""

FORGET = """
-- KEYS: nodes, node, states, cap, endpoints, overcommit, generation, nleases ; ARGV: node_id
if redis.call('HGET', KEYS[2], 'state') ~= 'down' or redis.call('SCARD', KEYS[8]) > 0 then return 0 end
local idx = redis.call('HGET', KEYS[2], 'capidx')
if idx then
  for _, g in ipairs(cjson.decode(idx)) do redis.call('HDEL', KEYS[4], ARGV[1] .. ':' .. tostring(g)) end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('INCR', KEYS[7])
return 1
"""

LOCK = """
-- KEYS: lock ; ARGV: owner, ttl ms
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

UNLOCK = """
-- KEYS: lock ; ARGV: owner
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


SEEN = """
-- KEYS: lease
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'seen', '1') end
return 1
"""

REVOKE = """
-- KEYS: apikeys, keyhash ; ARGV: key_id, revoked JSON, key hash
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
return 1
"""
