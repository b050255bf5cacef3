-- wrk script: the Synapse peer's PUT /rooms/{roomId}/send/m.room.message/{txnId}, a txnId
-- unique per request (as the relay's messageId). Args: <run id> <path up to the txnId>.
-- The message carries the relay bench's 200-byte payload.
local counter = 0
local run = "run"
local prefix = "/"
local body = '{"msgtype":"m.text","body":"' .. string.rep("x", 200) .. '"}'

function init(args)
  run = args[1] or run
  prefix = args[2] or prefix
  wrk.headers["Content-Type"] = "application/json" -- -H headers (the token) stay in wrk.headers
end

function request()
  counter = counter + 1
  return wrk.format("PUT", prefix .. run .. "-" .. counter, nil, body)
end
