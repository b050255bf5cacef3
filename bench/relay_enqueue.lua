-- wrk script: relay enqueue with a unique messageId per request, recipients spread over 2000.
-- Args: <run id>. The body is the same for the product and the bare baseline.
local counter = 0
local run = "run"
local payload = string.rep("x", 200)

function init(args)
  run = args[1] or run
  wrk.headers["Content-Type"] = "application/json" -- -H headers (the token) stay in wrk.headers
end

function request()
  counter = counter + 1
  local to = "bench-r" .. (counter % 2000)
  local body = string.format(
    '{"to":"%s","convId":"%s:bench-sender","messageId":"%s-%d","payload":"%s"}',
    to, to, run, counter, payload)
  return wrk.format("POST", nil, nil, body)
end
