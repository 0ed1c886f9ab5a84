-- One record of one UA, written only by the shard that holds the UA's claim.
-- KEYS: the UA's hash, its messages (one {uaid} slot).
-- ARGV: token, mode ("new": the UA was minted by this shard and may not
-- exist yet; "held": it was claimed), TTL in ms (0: none), op, op args.
local owner = redis.call('HGET', KEYS[1], 'o')
local created = false
if owner ~= ARGV[1] then
  if owner or ARGV[2] ~= 'new' then
    return redis.error_reply('FENCED the UA is held by another node')
  end
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  created = true
end
local op = ARGV[4]
if op == 'seen' then
  redis.call('HSET', KEYS[1], 's', ARGV[5])
elseif op == 'wake' then
  if ARGV[5] == '' then
    redis.call('HDEL', KEYS[1], 'w')
  else
    redis.call('HSET', KEYS[1], 'w', ARGV[5])
  end
elseif op == 'chan' then
  redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
elseif op == 'unchan' then
  redis.call('HDEL', KEYS[1], ARGV[5], 'v' .. ARGV[5])
  -- A message's field starts with its channel id (16 bytes).
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    if string.sub(field, 1, 16) == ARGV[5] then
      redis.call('HDEL', KEYS[2], field)
    end
  end
elseif op == 'ver' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'v' .. ARGV[5]))
  if not current or tonumber(ARGV[6]) > current then
    redis.call('HSET', KEYS[1], 'v' .. ARGV[5], ARGV[6])
  end
elseif op == 'msg' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
elseif op == 'unmsg' then
  redis.call('HDEL', KEYS[2], ARGV[5])
else
  return redis.error_reply('BADOP ' .. op)
end
-- The UA's keys expire ua_expiry_days after it was last seen: a 'seen'
-- renews both; a key a write creates gets the same lease (later writes keep
-- the lease a key has: one command less on the hot path).
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  if op == 'seen' then
    for i = 1, 2 do
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  elseif created then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  if op == 'msg' and redis.call('PTTL', KEYS[2]) == -1 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 1
