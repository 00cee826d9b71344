"""The official OpenAI and Anthropic Python SDKs across formats (run by tests/sdk.rs).

Usage: translate_python.py GATEWAY_URL EXPECTED_REPLY
Provider `up` is an OpenAI-compatible mock, provider `claude` (kind anthropic)
an Anthropic-shaped mock, provider `gem` (kind google) a Gemini-shaped mock; all
reply EXPECTED_REPLY and answer a forced tool
choice with a call to that tool. Exits non-zero (with a traceback) on any
mismatch.
"""

import json
import sys

import anthropic
import openai

gateway, expected = sys.argv[1], sys.argv[2]
messages = [{"role": "user", "content": "say something"}]
weather = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}

# The openai SDK, unchanged, against an Anthropic model.
oa = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0, timeout=20)
r = oa.chat.completions.create(model="claude/claude-test", messages=messages)
assert r.choices[0].message.content == expected, r
assert r.usage.completion_tokens > 0, r.usage

text = ""
usage = None
for c in oa.chat.completions.create(
    model="claude/claude-test", messages=messages, stream=True, stream_options={"include_usage": True}
):
    if c.choices:
        text += c.choices[0].delta.content or ""
    if c.usage:
        usage = c.usage
assert text == expected, text
assert usage is not None and usage.completion_tokens > 0, usage

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
forced = {"type": "function", "function": {"name": "get_weather"}}
r = oa.chat.completions.create(
    model="claude/claude-test", messages=messages, tools=tools, tool_choice=forced
)
call = r.choices[0].message.tool_calls[0]
assert r.choices[0].finish_reason == "tool_calls", r
assert call.function.name == "get_weather", call
args = json.loads(call.function.arguments)
assert args["days"] == 1, args

# Streamed tool call: the SDK's own accumulation of the fragments.
with oa.chat.completions.stream(
    model="claude/claude-test", messages=messages, tools=tools, tool_choice=forced
) as s:
    final = s.get_final_completion()
streamed = final.choices[0].message.tool_calls[0]
assert streamed.id == call.id or streamed.id.startswith("toolu_"), streamed
assert json.loads(streamed.function.arguments) == args, streamed

# The tool's result goes back and the conversation continues.
follow = messages + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
]
r = oa.chat.completions.create(model="claude/claude-test", messages=follow, tools=tools)
assert r.choices[0].message.content == expected, r

# The openai SDK, unchanged, against a Gemini model: whole, streamed, tools.
r = oa.chat.completions.create(model="gem/gemini-test", messages=messages)
assert r.choices[0].message.content == expected, r
text = "".join(
    c.choices[0].delta.content or ""
    for c in oa.chat.completions.create(model="gem/gemini-test", messages=messages, stream=True)
    if c.choices
)
assert text == expected, text
r = oa.chat.completions.create(
    model="gem/gemini-test", messages=messages, tools=tools, tool_choice=forced
)
gcall = r.choices[0].message.tool_calls[0]
assert gcall.function.name == "get_weather" and json.loads(gcall.function.arguments)["days"] == 1, r
with oa.chat.completions.stream(
    model="gem/gemini-test", messages=messages, tools=tools, tool_choice=forced
) as s:
    final = s.get_final_completion()
assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == json.loads(gcall.function.arguments)
follow = messages + [
    {"role": "assistant", "content": None, "tool_calls": [gcall.model_dump()]},
    {"role": "tool", "tool_call_id": gcall.id, "content": "sunny"},
]
r = oa.chat.completions.create(model="gem/gemini-test", messages=follow, tools=tools)
assert r.choices[0].message.content == expected, r

# The anthropic SDK through passthrough, byte for byte.
an = anthropic.Anthropic(base_url=f"{gateway}/claude", api_key="x", max_retries=0, timeout=20)
m = an.messages.create(model="claude-test", max_tokens=64, messages=messages)
assert m.content[0].text == expected, m
with an.messages.stream(model="claude-test", max_tokens=64, messages=messages) as s:
    assert "".join(s.text_stream) == expected

# The anthropic SDK against /v1/messages with an OpenAI-compatible model.
anyp = anthropic.Anthropic(base_url=gateway, api_key="x", max_retries=0, timeout=20)
m = anyp.messages.create(model="up/gpt-x", max_tokens=64, system="be brief", messages=messages)
assert m.content[0].text == expected, m
assert m.stop_reason == "end_turn", m
assert m.usage.output_tokens > 0, m.usage
with anyp.messages.stream(model="up/gpt-x", max_tokens=64, messages=messages) as s:
    assert "".join(s.text_stream) == expected
    final = s.get_final_message()
assert final.usage.output_tokens > 0, final.usage

atools = [{"name": "get_weather", "input_schema": weather}]
m = anyp.messages.create(
    model="up/gpt-x",
    max_tokens=64,
    messages=messages,
    tools=atools,
    tool_choice={"type": "tool", "name": "get_weather"},
)
use = m.content[0]
assert m.stop_reason == "tool_use" and use.type == "tool_use", m
assert use.input["days"] == 1, use
with anyp.messages.stream(
    model="up/gpt-x",
    max_tokens=64,
    messages=messages,
    tools=atools,
    tool_choice={"type": "tool", "name": "get_weather"},
) as s:
    final = s.get_final_message()
assert final.content[0].type == "tool_use" and final.content[0].input == use.input, final

# The tool result round trip through the reverse translation.
m = anyp.messages.create(
    model="up/gpt-x",
    max_tokens=64,
    tools=atools,
    messages=messages
    + [
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ],
)
assert m.content[0].text == expected, m

# A provider error is the SDK's typed error, in its own shape.
try:
    anyp.messages.create(
        model="up/gpt-x", max_tokens=8, messages=messages, extra_headers={"x-mock-error": "429"}
    )
    raise AssertionError("a 429 passed")
except anthropic.RateLimitError as err:
    assert err.body["error"]["type"] == "rate_limit_error", err.body

# aigw's own error (no such provider) is in Anthropic's shape too.
try:
    anyp.messages.create(model="nowhere/gpt-x", max_tokens=8, messages=messages)
    raise AssertionError("an unknown provider passed")
except anthropic.BadRequestError as err:
    assert err.body["type"] == "error", err.body
    assert err.body["error"]["type"] == "invalid_request_error", err.body

print("openai", openai.__version__, "anthropic", anthropic.__version__, "ok")
