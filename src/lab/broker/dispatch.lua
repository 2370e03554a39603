-- leakprof's Redis dispatcher: every broker operation is one call of this
-- script, so each one is atomic. It keeps Dramatiq 2.0's key layout and
-- argument convention, so Python Dramatiq workers and leakprof workers can
-- share queues, ack sets and dead letters.
--
-- KEYS[1]  namespace ("dramatiq")
-- ARGV[1]  command            ARGV[5]  heartbeat timeout (ms)
-- ARGV[2]  timestamp (ms)     ARGV[6]  dead-message TTL (ms)
-- ARGV[3]  queue name         ARGV[7]  "1" to run maintenance first
-- ARGV[4]  worker id          ARGV[8]  largest batch to unpack at once
-- ARGV[9...] the command's own arguments
--
-- Keys, for queue Q of namespace NS:
--   NS:Q                          list of message ids, FIFO
--   NS:Q.msgs                     hash id -> message JSON
--   NS:Q.DQ, NS:Q.DQ.msgs         Q's delay queue, the same shapes
--   NS:Q.XQ                       zset of dead-lettered ids, scored by time
--   NS:Q.XQ.msgs                  hash id -> dead message JSON
--   NS:__acks__.WORKER.Q          set of ids WORKER fetched and has not settled
--   NS:__heartbeats__             zset worker id -> time of its last call
--
-- Ids are the brokers' `redis_message_id`s, unique per enqueue.

local namespace = KEYS[1]
local command = ARGV[1]
local now = tonumber(ARGV[2])
local queue = ARGV[3]
local worker = ARGV[4]
local heartbeat_timeout = tonumber(ARGV[5])
local dead_message_ttl = tonumber(ARGV[6])
local maintain = ARGV[7] == "1"
local batch_limit = tonumber(ARGV[8])

local args = {}
for i = 9, #ARGV do
    args[#args + 1] = ARGV[i]
end

-- A delay queue dead-letters into its canonical queue: never Q.DQ.XQ.
local canonical = queue
if string.sub(queue, -3) == ".DQ" then
    canonical = string.sub(queue, 1, -4)
end

local queue_ids = namespace .. ":" .. queue
local queue_bodies = queue_ids .. ".msgs"
local dead_ids = namespace .. ":" .. canonical .. ".XQ"
local dead_bodies = dead_ids .. ".msgs"
local heartbeats = namespace .. ":__heartbeats__"
local acks_prefix = namespace .. ":__acks__."

local function acks_of(some_worker, some_queue)
    return acks_prefix .. some_worker .. "." .. some_queue
end

local my_acks = acks_of(worker, queue)

-- Calls fn with the items as arguments, at most batch_limit at a time, so
-- unpack never overflows Lua's C stack.
local function in_batches(items, fn)
    for first = 1, #items, batch_limit do
        fn(unpack(items, first, math.min(first + batch_limit - 1, #items)))
    end
end

-- Puts an id back at the tail of the queue if its body still exists.
local function push_back(id)
    if redis.call("hexists", queue_bodies, id) == 1 then
        redis.call("rpush", queue_ids, id)
    end
end

local function glob_escape(text)
    return (string.gsub(text, "([%*%?%[%]\\])", "\\%1"))
end

-- Every call is a heartbeat of the calling worker.
redis.call("zadd", heartbeats, now, worker)

if maintain then
    -- Give the messages of workers that stopped calling back to this queue.
    local dead_workers = redis.call("zrangebyscore", heartbeats, "-inf", now - heartbeat_timeout)
    for _, dead_worker in ipairs(dead_workers) do
        local their_acks = acks_of(dead_worker, queue)
        local held = redis.call("smembers", their_acks)
        for _, id in ipairs(held) do
            push_back(id)
        end
        redis.call("del", their_acks)
        -- Forget the worker once it holds nothing on any queue.
        local pattern = glob_escape(acks_prefix .. dead_worker .. ".") .. "*"
        if #redis.call("keys", pattern) == 0 then
            redis.call("zrem", heartbeats, dead_worker)
        end
    end

    -- Drop dead letters older than their TTL.
    local expired = redis.call("zrangebyscore", dead_ids, "-inf", now - dead_message_ttl)
    in_batches(expired, function(...)
        redis.call("zrem", dead_ids, ...)
        redis.call("hdel", dead_bodies, ...)
    end)
end

if command == "enqueue" then
    -- enqueue ID JSON. Idempotent: a retried enqueue of the same id after a
    -- lost reply must not push the id twice.
    local id, body = args[1], args[2]
    if redis.call("hset", queue_bodies, id, body) == 1 then
        redis.call("rpush", queue_ids, id)
    end
    return 1

elseif command == "fetch" then
    -- fetch N -> {id1, json1, id2, json2, ...}; a json is nil when the id's
    -- body is gone (purged, or pushed twice by an older client).
    local wanted = math.min(tonumber(args[1]), batch_limit)
    local reply = {}
    for _ = 1, wanted do
        local id = redis.call("lpop", queue_ids)
        if not id then
            break
        end
        redis.call("sadd", my_acks, id)
        reply[#reply + 1] = id
        reply[#reply + 1] = redis.call("hget", queue_bodies, id)
    end
    return reply

elseif command == "ack" then
    -- ack ID. Idempotent: only the first ack of a fetched id deletes it.
    local id = args[1]
    if redis.call("srem", my_acks, id) == 1 then
        redis.call("hdel", queue_bodies, id)
    end
    return 1

elseif command == "nack" then
    -- nack ID: dead-letter a fetched message. Idempotent like ack.
    local id = args[1]
    if redis.call("srem", my_acks, id) == 1 then
        local body = redis.call("hget", queue_bodies, id)
        if body then
            redis.call("zadd", dead_ids, now, id)
            redis.call("hset", dead_bodies, id, body)
            redis.call("hdel", queue_bodies, id)
        end
    end
    return 1

elseif command == "requeue" then
    -- requeue ID...: give fetched messages back to the queue.
    for _, id in ipairs(args) do
        if redis.call("srem", my_acks, id) == 1 then
            push_back(id)
        end
    end
    return 1

elseif command == "recover" then
    -- recover HELD_ID...: give back every id in this worker's ack set that
    -- the worker does not know it holds (a fetch whose reply was lost).
    local held = {}
    for _, id in ipairs(args) do
        held[id] = true
    end
    local recovered = 0
    for _, id in ipairs(redis.call("smembers", my_acks)) do
        if not held[id] then
            redis.call("srem", my_acks, id)
            push_back(id)
            recovered = recovered + 1
        end
    end
    return recovered

elseif command == "purge" then
    -- purge: drop the queue, this worker's ack set, the bodies and the
    -- dead letters of the canonical queue.
    redis.call("del", queue_ids, my_acks, queue_bodies, dead_ids, dead_bodies)
    return 1

elseif command == "qsize" then
    -- qsize -> messages of the canonical queue and its delay queue that are
    -- waiting or fetched and not yet settled, by any worker.
    local base = namespace .. ":" .. canonical
    return redis.call("hlen", base .. ".msgs") + redis.call("hlen", base .. ".DQ.msgs")

elseif command == "dead_letters" then
    -- dead_letters -> {id1, score1, json1, ...} of the canonical queue's
    -- dead letters, oldest first.
    local scored = redis.call("zrange", dead_ids, 0, -1, "withscores")
    local reply = {}
    for i = 1, #scored, 2 do
        reply[#reply + 1] = scored[i]
        reply[#reply + 1] = scored[i + 1]
        reply[#reply + 1] = redis.call("hget", dead_bodies, scored[i])
    end
    return reply

elseif command == "heartbeat" then
    -- heartbeat: nothing beyond the heartbeat every call records.
    return 1
end

return redis.error_reply("unknown dispatcher command " .. tostring(command))
