-- A shard lets a UA go, if its claim is still the one in the store.
-- KEYS: the UA's hash, its messages (one {uaid} slot).
-- ARGV: token.
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then
  return 0
end
-- A UA with nothing durable (an anonymous hello) leaves nothing behind:
-- its hash holds no field but the claim and perhaps wakeup data, and no
-- message is stored.
local durable = redis.call('HLEN', KEYS[1]) - 1 - redis.call('HEXISTS', KEYS[1], 'w')
if durable == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
-- Released, not deleted: a late write under the old claim stays fenced.
redis.call('HSET', KEYS[1], 'o', '')
return 1
