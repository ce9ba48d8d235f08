-- filesem: move a key aside for recovery if it is unchanged, optionally writing a fresh
-- value in its place, and announce it. (Preceded by unchanged.lua.)
-- KEYS[1]  the state key
-- KEYS[2]  where to move it
-- ARGV[1], ARGV[2]  the type and fingerprint seen by inspect.lua
-- ARGV[3]  the channel for change notices
-- ARGV[4]  '1' to write ARGV[5] at KEYS[1] after the move, '0' to leave it missing
-- Returns 1 if done, 0 if the key changed since it was inspected, -1 if KEYS[2] exists
-- (nothing done in both cases).
if not unchanged() then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
if ARGV[1] ~= 'none' then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[5])
end
redis.call('PUBLISH', ARGV[3], 'recovered')
return 1
