-- filesem: delete a key if it is unchanged, and announce it. (Preceded by unchanged.lua.)
-- KEYS[1]  the state key
-- ARGV[1], ARGV[2]  the type and fingerprint seen by inspect.lua
-- ARGV[3]  the channel for change notices
-- Returns 1 if deleted (or already missing, as inspected), 0 if the key changed since it
-- was inspected (nothing done).
if not unchanged() then
  return 0
end
if ARGV[1] ~= 'none' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], 'deleted')
end
return 1
