//! Translation between wire formats, per request and per streamed event, both
//! directions: OpenAI chat -> Anthropic Messages (the request) and back (the
//! reply, whole and streamed), Anthropic Messages -> OpenAI chat and back,
//! and OpenAI chat -> Gemini and back.

use aigw::providers::anthropic::{inbound, reply, request};
use aigw::providers::google;
use aigw::providers::translate::ReplyTranslator;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// A typical chat request: a system prompt, a few turns, one tool.
const CHAT: &[u8] = br#"{"model":"anthropic/claude-sonnet-4-5","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and cite sources when you can."},{"role":"user","content":"What is the weather in Paris today, and should I take an umbrella?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"light rain, 14C"},{"role":"user","content":"Thanks. And tomorrow?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}}],"temperature":0.3,"max_tokens":512,"stream":true,"stream_options":{"include_usage":true}}"#;

/// The same conversation as an Anthropic Messages request.
const MESSAGES: &[u8] = br#"{"model":"openai/gpt-4o-mini","max_tokens":512,"system":"You are a helpful assistant. Answer briefly and cite sources when you can.","messages":[{"role":"user","content":"What is the weather in Paris today, and should I take an umbrella?"},{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"light rain, 14C"},{"type":"text","text":"Thanks. And tomorrow?"}]}],"tools":[{"name":"get_weather","description":"Weather for a city","input_schema":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}],"stream":true}"#;

const ANTHROPIC_MESSAGE: &[u8] = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Tomorrow looks dry in Paris, around 17C with a light breeze; you can leave the umbrella at home, though a light jacket helps in the evening."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":210,"output_tokens":38,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#;

const OPENAI_COMPLETION: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Tomorrow looks dry in Paris, around 17C with a light breeze; you can leave the umbrella at home, though a light jacket helps in the evening."},"finish_reason":"stop"}],"usage":{"prompt_tokens":210,"completion_tokens":38,"total_tokens":248}}"#;

/// `n` Anthropic text deltas with the events around them.
fn anthropic_stream(n: usize) -> Vec<u8> {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":210,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} \"}}}}\n\n"
        ));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":64}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

/// `n` OpenAI content chunks, a usage chunk and `[DONE]`.
fn openai_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":210,\"completion_tokens\":64}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

/// `n` Gemini stream events, the last with the finish reason and usage.
fn gemini_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        let last = if i + 1 == n {
            ",\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":210,\"candidatesTokenCount\":64}"
        } else {
            "}]"
        };
        s.push_str(&format!(
            "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"token{i} \"}}]}}{last},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r\"}}\r\n\r\n"
        ));
    }
    s.into_bytes()
}

fn run(t: &mut dyn ReplyTranslator, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for piece in body.chunks(1024) {
        t.feed(black_box(piece), out);
    }
    t.finish(true, out);
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate_request");
    let mut out = Vec::with_capacity(4096);
    g.throughput(Throughput::Elements(1));
    g.bench_function("chat_to_anthropic", |b| {
        b.iter(|| request::chat(black_box(CHAT), "claude-sonnet-4-5", 4096, &mut out).unwrap())
    });
    g.bench_function("messages_to_chat", |b| {
        b.iter(|| {
            inbound::chat_request(black_box(MESSAGES), "gpt-4o-mini", true, false, &mut out)
                .unwrap()
        })
    });
    g.bench_function("chat_to_gemini", |b| {
        b.iter(|| google::request::chat(black_box(CHAT), &mut out).unwrap())
    });
    g.finish();
}

fn replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate_reply");
    let mut out = Vec::with_capacity(1 << 16);
    g.throughput(Throughput::Elements(1));
    g.bench_function("anthropic_message_to_chat", |b| {
        b.iter(|| {
            run(
                &mut reply::ChatReply::for_chat(200, false, false),
                ANTHROPIC_MESSAGE,
                &mut out,
            )
        })
    });
    g.bench_function("chat_completion_to_message", |b| {
        b.iter(|| {
            run(
                &mut inbound::MessagesReply::for_messages(200, false),
                OPENAI_COMPLETION,
                &mut out,
            )
        })
    });
    g.finish();

    // Per streamed event: 64 content events (plus the few around them).
    const EVENTS: usize = 64;
    let mut g = c.benchmark_group("translate_stream_64_events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    let a = anthropic_stream(EVENTS);
    g.bench_function("anthropic_to_chat", |b| {
        b.iter(|| {
            run(
                &mut reply::ChatReply::for_chat(200, true, true),
                &a,
                &mut out,
            )
        })
    });
    let o = openai_stream(EVENTS);
    g.bench_function("chat_to_anthropic_events", |b| {
        b.iter(|| {
            run(
                &mut inbound::MessagesReply::for_messages(200, true),
                &o,
                &mut out,
            )
        })
    });
    let gm = gemini_stream(EVENTS);
    g.bench_function("gemini_to_chat", |b| {
        b.iter(|| {
            run(
                &mut google::reply::ChatReply::for_chat(200, true, true, "gemini-2.5-flash"),
                &gm,
                &mut out,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);
