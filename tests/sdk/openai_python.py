"""The official OpenAI Python SDK against a running aigw (run by tests/sdk.rs).

Usage: openai_python.py GATEWAY_URL EXPECTED_REPLY GATEWAY_KEY
GATEWAY_URL is http://IP:PORT; provider `up` is the mock provider, whose replies
are EXPECTED_REPLY; GATEWAY_KEY is a gateway key the config defines (requests
without one pass; model `up/limited` allows one request per user). Exits
non-zero (with a traceback) on any mismatch.
"""

import sys

import openai

gateway, expected, gateway_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0, timeout=20)
messages = [{"role": "user", "content": "say something"}]

# Non-streaming chat completion through the unified API.
r = client.chat.completions.create(model="up/gpt-x", messages=messages)
assert r.choices[0].message.content == expected, r
assert r.usage is not None and r.usage.completion_tokens > 0, r.usage

# Streaming: every chunk the client sees has a choice (aigw asked for usage on
# the client's behalf and must drop the usage-only `"choices": []` event).
text = ""
chunks = 0
for chunk in client.chat.completions.create(model="up/gpt-x", messages=messages, stream=True):
    chunks += 1
    text += chunk.choices[0].delta.content or ""
assert chunks > 1, chunks
assert text == expected, text

# A client that asks for usage gets exactly one usage chunk.
usage = [
    c.usage
    for c in client.chat.completions.create(
        model="up/gpt-x", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    if not c.choices
]
assert len(usage) == 1 and usage[0].completion_tokens > 0, usage

# A stream's cost comes as a trailer field after its last chunk: the SDK reads
# the stream as usual, and the connection carries the next request.
costed = client.chat.completions.create(
    model="up/gpt-x",
    messages=[{"role": "user", "content": "what does this cost"}],
    stream=True,
    extra_headers={"aigw-include-cost": "true"},
)
assert costed.response.headers.get("trailer") == "aigw-cost", costed.response.headers
text = "".join(c.choices[0].delta.content or "" for c in costed)
assert text == expected, text
after = client.chat.completions.create(model="up/gpt-x", messages=messages)
assert after.choices[0].message.content == expected, after

# Embeddings.
e = client.embeddings.create(model="up/text-embedding-3-small", input=["one", "two"])
assert len(e.data) == 2 and len(e.data[0].embedding) > 0, e

# The gateway's built-in mock provider, streaming.
echo = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(
        model="mock/echo", messages=[{"role": "user", "content": "echo me"}], stream=True
    )
)
assert echo == "echo me", echo


# The Responses API streamed, against the built-in mock: the SDK's stream
# helper reads its events to the final response (with usage); the same
# request again is a cached stream that reads the same.
def responses_streamed():
    with client.responses.stream(model="mock/echo", input="stream a response") as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    return text, final.output_text, final.usage.output_tokens


first = responses_streamed()
assert first[0] == first[1] and first[0].startswith("This is a mock reply"), first
assert first[2] > 0, first
raw = client.responses.with_raw_response.create(model="mock/echo", input="stream a response", stream=True)
assert raw.headers.get("aigw-cache-status") == "HIT", raw.headers
assert [e.type for e in raw.parse()][-1] == "response.completed"
assert responses_streamed() == first

# The response cache (on in this gateway): the second identical request is a
# hit with the same answer; a cached stream reads like a live one.
cached = [{"role": "user", "content": "cache this"}]
first = client.chat.completions.with_raw_response.create(model="up/gpt-x", messages=cached)
second = client.chat.completions.with_raw_response.create(model="up/gpt-x", messages=cached)
assert first.headers.get("aigw-cache-status") == "MISS", first.headers
assert second.headers.get("aigw-cache-status") == "HIT", second.headers
assert second.parse().model_dump() == first.parse().model_dump()


def streamed():
    raw = client.chat.completions.with_raw_response.create(model="up/gpt-x", messages=cached, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse())
    return raw.headers.get("aigw-cache-status"), text


assert streamed() == ("MISS", expected)
assert streamed() == ("HIT", expected)

# A gateway error surfaces as the SDK's typed error.
try:
    client.chat.completions.create(model="nope/gpt-x", messages=messages)
    raise AssertionError("unknown provider accepted")
except openai.BadRequestError as err:
    assert err.code == "unknown_provider", err

# A gateway key as the SDK's api_key; a wrong one is the SDK's typed 401.
keyed = openai.OpenAI(base_url=f"{gateway}/v1", api_key=gateway_key, max_retries=0, timeout=20)
r = keyed.chat.completions.create(model="up/gpt-x", messages=messages)
assert r.choices[0].message.content == expected, r
wrong = openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-aigw-" + "0" * 64, max_retries=0, timeout=20)
try:
    wrong.chat.completions.create(model="up/gpt-x", messages=messages)
    raise AssertionError("a wrong gateway key was accepted")
except openai.AuthenticationError as err:
    assert err.code == "invalid_api_key", err

# A rate limit is the SDK's typed 429, with the headers it retries by (for
# another prompt: a cache hit does not count toward it, so it is served).
limited = {"aigw-metadata": '{"user":"sdk"}'}
keyed.chat.completions.create(model="up/limited", messages=messages, extra_headers=limited)
again = keyed.chat.completions.create(model="up/limited", messages=messages, extra_headers=limited)
assert again.choices[0].message.content == expected, again
other = [{"role": "user", "content": "another prompt"}]
try:
    keyed.chat.completions.create(model="up/limited", messages=other, extra_headers=limited)
    raise AssertionError("the second request passed a limit of one")
except openai.RateLimitError as err:
    assert err.code == "rate_limit_exceeded", err
    assert int(err.response.headers["retry-after"]) >= 1, err.response.headers
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0", err.response.headers

print("openai", openai.__version__, "ok")
