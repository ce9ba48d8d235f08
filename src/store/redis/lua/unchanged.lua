-- filesem: is KEYS[1] still what inspect.lua saw? ARGV[1] is the type, ARGV[2] the fingerprint.
local function unchanged()
  local kind = redis.call('TYPE', KEYS[1])['ok']
  if kind ~= ARGV[1] then
    return false
  end
  if kind == 'none' then
    return ARGV[2] == ''
  end
  return redis.sha1hex(redis.call('DUMP', KEYS[1])) == ARGV[2]
end
