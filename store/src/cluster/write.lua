-- One record of one UA, written only by the shard that holds the UA's claim.
-- KEYS: the UA's hash, its channels, its messages (one {uaid} slot).
-- ARGV: token, mode ("new": the UA was minted by this shard and may not
-- exist yet; "held": it was claimed), TTL in ms (0: none), op, op args.
local owner = redis.call('HGET', KEYS[1], 'o')
if owner ~= ARGV[1] then
  if owner or ARGV[2] ~= 'new' then
    return redis.error_reply('FENCED the UA is held by another node')
  end
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
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
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
elseif op == 'unchan' then
  redis.call('HDEL', KEYS[2], ARGV[5], 'v' .. ARGV[5])
  -- A message's field starts with its channel id (16 bytes).
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if string.sub(field, 1, 16) == ARGV[5] then
      redis.call('HDEL', KEYS[3], field)
    end
  end
elseif op == 'ver' then
  local current = tonumber(redis.call('HGET', KEYS[2], 'v' .. ARGV[5]))
  if not current or tonumber(ARGV[6]) > current then
    redis.call('HSET', KEYS[2], 'v' .. ARGV[5], ARGV[6])
  end
elseif op == 'msg' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
elseif op == 'unmsg' then
  redis.call('HDEL', KEYS[3], ARGV[5])
else
  return redis.error_reply('BADOP ' .. op)
end
-- The UA's keys expire ua_expiry_days after it was last seen: a 'seen'
-- renews all three; a key a write creates gets the same lease (later writes
-- to it keep the lease it has: one command less on the hot path).
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  if op == 'seen' then
    for i = 1, 3 do
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  elseif op == 'chan' then
    redis.call('PEXPIRE', KEYS[2], ttl)
  elseif op == 'msg' and redis.call('PTTL', KEYS[3]) == -1 then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return 1
