-- filesem: what a key holds, for recovery, whatever its type.
-- KEYS[1]  the state key
-- ARGV[1]  how many bytes of a string value to return (at least 1)
-- Returns {type, fingerprint, seconds, microseconds, prefix}: the Redis type ('none' if
-- missing), the SHA-1 (hex) of DUMP of the value ('' if missing), the server's clock, and the
-- first ARGV[1] bytes of a string value ('' for other types).
local kind = redis.call('TYPE', KEYS[1])['ok']
local now = redis.call('TIME')
if kind == 'none' then
  return {kind, '', now[1], now[2], ''}
end
local prefix = ''
if kind == 'string' then
  prefix = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
return {kind, redis.sha1hex(redis.call('DUMP', KEYS[1])), now[1], now[2], prefix}
