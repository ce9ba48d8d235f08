-- filesem: commit a state document only if it is what the writer read, and announce it.
-- KEYS[1]  the state key
-- ARGV[1]  what the writer read: '' if the key was missing, else the SHA-1 (hex) of its value
-- ARGV[2]  the new value
-- ARGV[3]  the channel for change notices
-- ARGV[4]  the notice: the SHA-1 (hex) of the new value
-- Returns 1 if the value was written and announced, 0 if the key changed since it was read
-- (nothing done). GET on a key of another type raises WRONGTYPE (nothing done).
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[1] == '' or redis.sha1hex(current) ~= ARGV[1] then
    return 0
  end
elseif ARGV[1] ~= '' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
