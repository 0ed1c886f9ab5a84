-- A shard takes a UA (the last claim wins) and reads everything it holds.
-- KEYS: the UA's hash, its messages (one {uaid} slot).
-- ARGV: token, TTL in ms (0: none).
-- Returns: the previous owner's token ('' if none), then the two hashes.
local previous = redis.call('HGET', KEYS[1], 'o') or ''
redis.call('HSET', KEYS[1], 'o', ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {
  previous,
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGETALL', KEYS[2]),
}
