-- wrk script: half lookups (GET /stocks/{name}), half trades (as trade.lua),
-- chosen at random per request.
local n = 0
request = function()
  n = n + 1
  if math.random() < 0.5 then
    return wrk.format("GET", "/stocks/" .. ((n % 2 == 0) and "AAPL" or "AMZN"))
  end
  local kind = (n % 3 == 0) and "buy" or "sell"
  local name = (n % 4 < 2) and "AAPL" or "AMZN"
  return wrk.format("POST", "/orders", {["Content-Type"]="application/json"}, '{"name":"' .. name .. '","quantity":1,"type":"' .. kind .. '"}')
end
