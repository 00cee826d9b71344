-- wrk script: POST the same chat-completion body aigw-load sends with --body,
-- so the wrk vs aigw-load comparison loads nginx with identical requests.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("AIGW_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
