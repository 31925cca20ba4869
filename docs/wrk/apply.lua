-- wrk script: the catalog alone, one POST /apply of one trade per request
-- (what the leader sends for a single trade), sells and buys of quantity 1
-- of AAPL and AMZN in turn (each sell before its buy, so any stocks file
-- with both will do). Numbers must follow each other, so run it with one
-- connection; the script takes the next number from the catalog's answer
-- to its first request (wrk builds one request before it sends any, so the
-- first is refused as out of sequence: wrk counts one non-2xx answer, and
-- more would be an error). Start a catalog, fence epoch 1 as leader 1,
-- then run wrk:
--   curl -s -X POST -H 'content-type: application/json' \
--     -d '{"epoch":1,"leader_id":1}' http://127.0.0.1:8081/fence
--   wrk -t1 -c1 -d6s -s docs/wrk/apply.lua --latency http://127.0.0.1:8081
-- With a cluster token set, export BAZAAR_TOKEN as for the services.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BAZAAR_TOKEN")
if token then
  wrk.headers["x-bazaar-token"] = token
end
local n = -1
request = function()
  n = n + 1
  local kind = (n % 2 == 0) and "sell" or "buy"
  local name = (n % 4 < 2) and "AAPL" or "AMZN"
  return wrk.format(nil, "/apply", nil,
    '{"epoch":1,"base":' .. n .. ',"leader_id":1,"trades":[{"name":"' .. name ..
    '","kind":"' .. kind .. '","quantity":1,"key":"wrk-' .. n .. '"}]}')
end
response = function(status, headers, body)
  if status == 409 then
    local next = body:match('"next":(%d+)')
    if next then
      n = tonumber(next) - 1
    end
  end
end
