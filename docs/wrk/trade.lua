-- wrk script: one POST /orders per request, buys and sells of quantity 1 of
-- AAPL and AMZN in turn. Run against a cluster whose stocks file holds enough
-- of both (docs/PERFORMANCE.md used 900000000 each), e.g.
--   wrk -t1 -c64 -d10s -s docs/wrk/trade.lua --latency http://127.0.0.1:8080
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local kind = (n % 2 == 0) and "buy" or "sell"
  local name = (n % 4 < 2) and "AAPL" or "AMZN"
  return wrk.format(nil, "/orders", nil, '{"name":"' .. name .. '","quantity":1,"type":"' .. kind .. '"}')
end
