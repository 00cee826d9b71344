// The official OpenAI Node SDK against a running aigw (run by tests/sdk.rs).
//
// Usage: node openai_node.mjs GATEWAY_URL EXPECTED_REPLY
// GATEWAY_URL is http://IP:PORT; provider `up` is the mock provider, whose
// replies are EXPECTED_REPLY. Exits non-zero, naming the failed check, on any
// mismatch. `npm ci --prefix tests/sdk/node` installs the SDK.

import OpenAI from "openai";
import { VERSION } from "openai/version";

const [gateway, expected, gatewayKey] = process.argv.slice(2);
if (!gateway || expected === undefined) {
  console.error("usage: node openai_node.mjs GATEWAY_URL EXPECTED_REPLY");
  process.exit(2);
}

let step = "set-up";
function check(ok, what) {
  if (!ok) throw new Error(what);
}
const show = (v) => JSON.stringify(v);

const client = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: "x", maxRetries: 0, timeout: 20_000 });
const messages = [{ role: "user", content: "say something" }];

try {
  // Non-streaming chat completion through the unified API.
  step = "non-streaming chat completion";
  const r = await client.chat.completions.create({ model: "up/gpt-x", messages });
  check(r.choices[0].message.content === expected, `content ${show(r.choices[0].message.content)}`);
  check(r.usage != null && r.usage.completion_tokens > 0, `usage ${show(r.usage)}`);

  // Streaming: every chunk the client sees has a choice (aigw asked for usage
  // on the client's behalf and must drop the usage-only `"choices": []` event;
  // if it leaked, `chunk.choices[0].delta` would throw a TypeError here).
  step = "streaming chat completion";
  let text = "";
  let chunks = 0;
  const stream = await client.chat.completions.create({ model: "up/gpt-x", messages, stream: true });
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0].delta.content ?? "";
  }
  check(chunks > 1, `only ${chunks} chunk(s)`);
  check(text === expected, `text ${show(text)}`);

  // A client that asks for usage gets exactly one usage chunk.
  step = "streaming with stream_options.include_usage";
  const usage = [];
  let withUsageText = "";
  const usageStream = await client.chat.completions.create({
    model: "up/gpt-x",
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of usageStream) {
    if (chunk.choices.length === 0) usage.push(chunk.usage);
    else withUsageText += chunk.choices[0].delta.content ?? "";
  }
  check(usage.length === 1 && usage[0]?.completion_tokens > 0, `usage chunks ${show(usage)}`);
  check(withUsageText === expected, `text ${show(withUsageText)}`);

  // A stream's cost comes as a trailer field after its last chunk: the SDK
  // reads the stream as usual.
  step = "streaming with aigw-include-cost (a trailer)";
  let costedText = "";
  const { data: costed, response: costedResponse } = await client.chat.completions
    .create(
      { model: "up/gpt-x", messages: [{ role: "user", content: "what does this cost" }], stream: true },
      { headers: { "aigw-include-cost": "true" } },
    )
    .withResponse();
  check(costedResponse.headers.get("trailer") === "aigw-cost", `trailer ${costedResponse.headers.get("trailer")}`);
  for await (const chunk of costed) costedText += chunk.choices[0]?.delta.content ?? "";
  check(costedText === expected, `text ${show(costedText)}`);

  // Embeddings (the SDK asks for base64 and decodes it to floats).
  step = "embeddings";
  const e = await client.embeddings.create({ model: "up/text-embedding-3-small", input: ["one", "two"] });
  check(e.data.length === 2, `${e.data.length} embeddings`);
  check(e.data.every((d) => d.embedding.length > 0), `empty embedding ${show(e.data)}`);

  // The response cache (on in this gateway): the second identical request is
  // a hit with the same answer; a cached stream reads like a live one.
  step = "cache: miss then hit";
  const cached = [{ role: "user", content: "cache this in node" }];
  const first = await client.chat.completions
    .create({ model: "up/gpt-x", messages: cached })
    .withResponse();
  const second = await client.chat.completions
    .create({ model: "up/gpt-x", messages: cached })
    .withResponse();
  check(first.response.headers.get("aigw-cache-status") === "MISS", `first ${first.response.headers.get("aigw-cache-status")}`);
  check(second.response.headers.get("aigw-cache-status") === "HIT", `second ${second.response.headers.get("aigw-cache-status")}`);
  check(JSON.stringify(second.data) === JSON.stringify(first.data), `answers differ ${show(second.data)}`);
  step = "cache: a stream replayed";
  for (const want of ["MISS", "HIT"]) {
    const { data: stream, response } = await client.chat.completions
      .create({ model: "up/gpt-x", messages: cached, stream: true })
      .withResponse();
    let replayed = "";
    for await (const chunk of stream) replayed += chunk.choices[0].delta.content ?? "";
    check(response.headers.get("aigw-cache-status") === want, `stream ${response.headers.get("aigw-cache-status")}, wanted ${want}`);
    check(replayed === expected, `text ${show(replayed)}`);
  }

  // The gateway's built-in mock provider, streaming.
  step = "built-in mock provider (mock/echo), streaming";
  let echo = "";
  const echoStream = await client.chat.completions.create({
    model: "mock/echo",
    messages: [{ role: "user", content: "echo me" }],
    stream: true,
  });
  for await (const chunk of echoStream) echo += chunk.choices[0].delta.content ?? "";
  check(echo === "echo me", `echo ${show(echo)}`);

  // A gateway error surfaces as the SDK's typed error.
  step = "unknown provider";
  let caught;
  try {
    await client.chat.completions.create({ model: "nope/gpt-x", messages });
  } catch (err) {
    caught = err;
  }
  check(caught !== undefined, "unknown provider accepted");
  check(caught instanceof OpenAI.APIError, `not an APIError: ${caught}`);
  check(caught instanceof OpenAI.BadRequestError, `not a BadRequestError: ${caught}`);
  check(caught.status === 400, `status ${caught.status}`);
  check(caught.code === "unknown_provider", `code ${show(caught.code)}`);

  // A gateway key as the SDK's apiKey; a wrong one is the typed 401.
  step = "gateway key";
  const keyed = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: gatewayKey, maxRetries: 0, timeout: 20_000 });
  const ok = await keyed.chat.completions.create({ model: "up/gpt-x", messages });
  check(ok.choices[0].message.content === expected, `keyed reply ${show(ok.choices[0].message.content)}`);
  step = "wrong gateway key";
  const wrong = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: "sk-aigw-" + "0".repeat(64), maxRetries: 0, timeout: 20_000 });
  caught = undefined;
  try {
    await wrong.chat.completions.create({ model: "up/gpt-x", messages });
  } catch (err) {
    caught = err;
  }
  check(caught instanceof OpenAI.AuthenticationError, `not an AuthenticationError: ${caught}`);

  // A rate limit is the typed 429, with the headers the SDK retries by
  // (for another prompt: a cache hit does not count toward it).
  step = "rate limit";
  const limited = { headers: { "aigw-metadata": '{"user":"sdk"}' } };
  await keyed.chat.completions.create({ model: "up/limited", messages }, limited);
  const again = await keyed.chat.completions.create({ model: "up/limited", messages }, limited);
  check(again.choices[0].message.content === expected, "a cache hit is served past the limit");
  const other = [{ role: "user", content: "another prompt" }];
  caught = undefined;
  try {
    await keyed.chat.completions.create({ model: "up/limited", messages: other }, limited);
  } catch (err) {
    caught = err;
  }
  check(caught instanceof OpenAI.RateLimitError, `not a RateLimitError: ${caught}`);
  check(caught.code === "rate_limit_exceeded", `code ${show(caught.code)}`);
  check(Number(caught.headers.get("retry-after")) >= 1, `retry-after ${caught.headers.get("retry-after")}`);
} catch (err) {
  console.error(`FAILED at ${step}:`, err);
  process.exit(1);
}

console.log("openai-node", VERSION, "node", process.version, "ok");
