#!lua
-- publish.lua: publish one appointment event, atomically (notify_publisher).
--
-- The `#!lua` line (Redis 7) makes Redis check memory before the script starts:
-- on a full Redis (maxmemory, noeviction) the whole script is refused with OOM,
-- never half-run (without it, a write in the middle may be refused after the
-- XADD went through).
--
-- Appends the event to its patient's history stream (trimmed, with a TTL), then
-- publishes it on the patient's live channel with its new stream id spliced in as
-- "id" (the id clients resume from). Every key and the channel carry the patient
-- id as hash tag ({<patient_id>}), so the script touches one Cluster slot.
--
-- KEYS[1]  history stream         <prefix>history:{<patient_id>}
-- KEYS[2]  optional: idempotency  <prefix>idempotency:{<patient_id>}:<key>
--
-- ARGV[1]  the event: a compact JSON object without "id", e.g.
--          {"type":"appointment.created","patient_id":"pt_1",...}
-- ARGV[2]  history MAXLEN (approximate trim), e.g. 1000
-- ARGV[3]  history TTL in seconds, e.g. 604800
-- ARGV[4]  live channel           <prefix>patient:{<patient_id>}
-- ARGV[5]  optional: PUBLISH (default) or SPUBLISH (Redis Cluster: shard channel)
-- With KEYS[2] (idempotency), also:
-- ARGV[6]  fingerprint of the event: equal events must give equal strings
--          (the library sends the SHA-256 of the canonical JSON)
-- ARGV[7]  record TTL in seconds (NOTIFY_IDEMPOTENCY_TTL_S)
-- ARGV[8]  optional: published_at of this attempt, kept to answer a replay
-- ARGV[9]  optional: milliseconds during which a repeat of this key is refused as
--          "in flight" (a durable publish still waiting for replicas); 0: none
-- ARGV[10] optional: who is publishing (any string, one per call, the same for
--          the retries of that call): a retry of the caller holding the key is
--          answered as a replay, another caller's repeat gets IN_FLIGHT
--
-- Returns {id, status, published_at}: status "stored" (a new history entry,
-- delivered live) or "replayed" (the key was seen: the first attempt's id and
-- published_at; nothing stored or delivered).
-- Errors: IDEMPOTENCY_KEY_REUSED (the key came with another event),
-- IDEMPOTENCY_KEY_IN_FLIGHT (the first attempt is still waiting for replicas).
--
-- Example (no idempotency):
--   redis-cli --eval publish.lua 'notify:history:{pt_1}' , \
--     '{"type":"appointment.created","patient_id":"pt_1","appointment_id":"ap_1","occurred_at":"2026-12-01T09:00:00Z","data":{}}' \
--     1000 604800 'notify:patient:{pt_1}'

local record = KEYS[2]
local hold = tonumber(ARGV[9] or '0') or 0

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

if record then
  local seen = redis.call('HMGET', record, 'id', 'h', 'p', 'f', 'o')
  if seen[1] then
    if seen[2] ~= ARGV[6] then
      return redis.error_reply('IDEMPOTENCY_KEY_REUSED this idempotency key was used for another event')
    end
    if seen[4] and seen[5] ~= ARGV[10] and tonumber(seen[4]) > now_ms() then
      return redis.error_reply('IDEMPOTENCY_KEY_IN_FLIGHT the first publish with this key is still waiting for replicas')
    end
    if hold > 0 then
      -- A durable repeat: this write makes the caller's WAIT cover everything
      -- written before it, the first attempt's entry included.
      redis.call('HSET', record, 'f', now_ms() + hold, 'o', ARGV[10] or '')
    end
    return {seen[1], 'replayed', seen[3] or ''}
  end
end

local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = ''
if #last > 0 then prev = last[1][1] end
-- 'p' links each entry to the previous one, so a reader can tell a trimmed or
-- lost history from a complete one.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1], 'p', prev)
redis.call('EXPIRE', KEYS[1], ARGV[3])

local published_at = ARGV[8] or ''
if record then
  redis.call('HSET', record, 'id', id, 'h', ARGV[6], 'p', published_at)
  if hold > 0 then redis.call('HSET', record, 'f', now_ms() + hold, 'o', ARGV[10] or '') end
  redis.call('EXPIRE', record, ARGV[7])
end

local command = 'PUBLISH'
if ARGV[5] == 'SPUBLISH' then command = 'SPUBLISH' end
redis.call(command, ARGV[4], '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return {id, 'stored', published_at}
