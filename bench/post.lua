-- wrk POST script for css-inference-service benchmarks.
--   wrk ... http://127.0.0.1:PORT/service_output   -s bench/post.lua -- service
--   wrk ... http://127.0.0.1:PORT/v1/chat/completions -s bench/post.lua -- direct
-- "service" posts the off-chain completion job; "direct" posts the OpenAI body the
-- service would send for it (same request shape, straight at the fake provider).
-- done() prints one line "BENCH_JSON {...}" with exact percentiles (microseconds) and
-- every error counter, for bench/run.py.

local bodies = {
   service = '{"source":1,"destination":1,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
      .. '"messages":[{"role":"user","content":"hi"}]}}}',
   direct = '{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}',
}

local req

function init(args)
   local mode = args[1] or "service"
   local body = bodies[mode]
   if body == nil then error("post.lua: mode must be 'service' or 'direct', got " .. tostring(mode)) end
   local headers = { ["Content-Type"] = "application/json" }
   if mode == "direct" then headers["Authorization"] = "Bearer bench" end
   req = wrk.format("POST", nil, headers, body)
end

function request()
   return req
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = {}
   for _, q in ipairs({ 50, 90, 99, 99.9 }) do
      p[#p + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
   end
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
         .. '"status":%d,"timeout":%d,"lat_min":%d,"lat_max":%d,"lat_mean":%.1f,"lat_stdev":%.1f,"pct":{%s}}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev, table.concat(p, ",")))
end
