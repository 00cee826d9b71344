//! Translation fixtures as golden files, both ways: each input under
//! `tests/golden/translate/` is translated and compared byte for byte with
//! its expected output beside it (tool-call round trips, images, multi-turn,
//! whole replies and streams). `"created"` timestamps are zeroed before the
//! comparison. `AIGW_BLESS=1 cargo test --test translate_golden` rewrites the
//! expected files after a deliberate change (review the diff).
//!
//! Also: for each reply format, the stream reassembled (text, tool calls,
//! finish reason) equals the whole reply's translation.

use aigw::providers::anthropic::{inbound, reply, request};
use aigw::providers::google;
use aigw::providers::translate::ReplyTranslator;
use simd_json::prelude::*;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/translate")
}

fn input(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `"created":<digits>` becomes `"created":0`.
fn normalized(out: &[u8]) -> String {
    let s = String::from_utf8(out.to_vec()).expect("UTF-8 output");
    let mut result = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(at) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(at + 10);
        result.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        result.push('0');
        rest = &tail[digits..];
    }
    result.push_str(rest);
    result
}

fn golden(name: &str, out: &[u8]) {
    let path = dir().join(name);
    let got = normalized(out);
    if std::env::var("AIGW_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{name}: {e} (AIGW_BLESS=1 writes it)"));
    assert_eq!(got, want, "{name} differs from its golden file");
}

fn run(t: &mut dyn ReplyTranslator, body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in body.chunks(piece) {
        t.feed(p, &mut out);
    }
    t.finish(true, &mut out);
    out
}

fn parse(b: &[u8]) -> simd_json::OwnedValue {
    let mut copy = b.to_vec();
    simd_json::to_owned_value(&mut copy)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

#[test]
fn requests_translate_to_their_golden_files() {
    let chat = input("chat_tools_images.request.json");
    let mut out = Vec::new();
    request::chat(&chat, "claude-sonnet-4-5", 4096, &mut out).unwrap();
    golden("chat_tools_images.anthropic.json", &out);
    google::request::chat(&chat, &mut out).unwrap();
    golden("chat_tools_images.gemini.json", &out);
    let messages = input("messages_tools.request.json");
    inbound::chat_request(&messages, "gpt-4o-mini", true, false, &mut out).unwrap();
    golden("messages_tools.chat.json", &out);
}

#[test]
fn replies_translate_to_their_golden_files_whole_and_streamed() {
    // Every stream is fed in small pieces: events split across reads.
    let m = input("anthropic_tool_use.message.json");
    golden(
        "anthropic_tool_use.chat.json",
        &run(&mut reply::ChatReply::for_chat(200, false, false), &m, 7),
    );
    let s = input("anthropic_tool_use.stream.sse");
    golden(
        "anthropic_tool_use.chat.sse",
        &run(&mut reply::ChatReply::for_chat(200, true, true), &s, 5),
    );
    let g = input("gemini_tool_use.response.json");
    golden(
        "gemini_tool_use.chat.json",
        &run(
            &mut google::reply::ChatReply::for_chat(200, false, false, "gemini-2.5-flash"),
            &g,
            9,
        ),
    );
    let gs = input("gemini_tool_use.stream.sse");
    golden(
        "gemini_tool_use.chat.sse",
        &run(
            &mut google::reply::ChatReply::for_chat(200, true, true, "gemini-2.5-flash"),
            &gs,
            3,
        ),
    );
    let c = input("chat_tool_use.completion.json");
    golden(
        "chat_tool_use.message.json",
        &run(
            &mut inbound::MessagesReply::for_messages(200, false),
            &c,
            11,
        ),
    );
    let cs = input("chat_tool_use.stream.sse");
    golden(
        "chat_tool_use.anthropic.sse",
        &run(&mut inbound::MessagesReply::for_messages(200, true), &cs, 4),
    );
}

/// The text, tool calls `(id, name, arguments as JSON)` and finish reason of
/// an OpenAI chat completion, whole or as chunks.
type Answer = (String, Vec<(String, String, simd_json::OwnedValue)>, String);

fn chat_answer(whole: &[u8]) -> Answer {
    let v = parse(whole);
    let m = &v["choices"][0]["message"];
    let calls = m
        .get("tool_calls")
        .and_then(|c| c.as_array())
        .map(|c| {
            c.iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap().to_string(),
                        c["function"]["name"].as_str().unwrap().to_string(),
                        parse(c["function"]["arguments"].as_str().unwrap().as_bytes()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        m["content"].as_str().unwrap_or("").to_string(),
        calls,
        v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn chunks_answer(stream: &[u8]) -> Answer {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for line in String::from_utf8_lossy(stream).lines() {
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            continue;
        }
        let v = parse(d.as_bytes());
        let Some(c) = v["choices"].get_idx(0) else {
            continue;
        };
        if let Some(t) = c["delta"].get("content").and_then(|t| t.as_str()) {
            text.push_str(t);
        }
        for call in c["delta"]
            .get("tool_calls")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            if let Some(id) = call.get("id").and_then(|x| x.as_str()) {
                calls[i].0 = id.to_string();
            }
            if let Some(n) = call["function"].get("name").and_then(|x| x.as_str()) {
                calls[i].1 = n.to_string();
            }
            if let Some(a) = call["function"].get("arguments").and_then(|x| x.as_str()) {
                calls[i].2.push_str(a);
            }
        }
        if let Some(f) = c.get("finish_reason").and_then(|f| f.as_str()) {
            finish = f.to_string();
        }
    }
    let calls = calls
        .into_iter()
        .map(|(id, name, args)| (id, name, parse(args.as_bytes())))
        .collect();
    (text, calls, finish)
}

#[test]
fn a_stream_reassembled_equals_the_whole_answer() {
    let whole = run(
        &mut reply::ChatReply::for_chat(200, false, false),
        &input("anthropic_tool_use.message.json"),
        64,
    );
    let streamed = run(
        &mut reply::ChatReply::for_chat(200, true, false),
        &input("anthropic_tool_use.stream.sse"),
        64,
    );
    assert_eq!(chunks_answer(&streamed), chat_answer(&whole));

    let whole = run(
        &mut google::reply::ChatReply::for_chat(200, false, false, "g"),
        &input("gemini_tool_use.response.json"),
        64,
    );
    let streamed = run(
        &mut google::reply::ChatReply::for_chat(200, true, false, "g"),
        &input("gemini_tool_use.stream.sse"),
        64,
    );
    assert_eq!(chunks_answer(&streamed), chat_answer(&whole));

    // Anthropic-shaped: the message's blocks against the events' blocks.
    let whole = parse(&run(
        &mut inbound::MessagesReply::for_messages(200, false),
        &input("chat_tool_use.completion.json"),
        64,
    ));
    let streamed = run(
        &mut inbound::MessagesReply::for_messages(200, true),
        &input("chat_tool_use.stream.sse"),
        64,
    );
    let mut blocks: Vec<(String, String, String)> = Vec::new();
    let mut stop = String::new();
    for line in String::from_utf8_lossy(&streamed).lines() {
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        let e = parse(d.as_bytes());
        match e["type"].as_str().unwrap() {
            "content_block_start" => {
                let b = &e["content_block"];
                blocks.push((
                    b["type"].as_str().unwrap().to_string(),
                    b.get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("")
                        .to_string(),
                    String::new(),
                ));
            }
            "content_block_delta" => {
                let d = &e["delta"];
                let piece = d
                    .get("text")
                    .or_else(|| d.get("partial_json"))
                    .and_then(|p| p.as_str())
                    .unwrap();
                blocks.last_mut().unwrap().2.push_str(piece);
            }
            "message_delta" => stop = e["delta"]["stop_reason"].as_str().unwrap().to_string(),
            _ => {}
        }
    }
    let content = whole["content"].as_array().unwrap();
    assert_eq!(blocks.len(), content.len());
    for (b, c) in blocks.iter().zip(content) {
        assert_eq!(b.0, c["type"].as_str().unwrap());
        if b.0 == "text" {
            assert_eq!(b.2, c["text"].as_str().unwrap());
        } else {
            assert_eq!(b.1, c["name"].as_str().unwrap());
            assert_eq!(parse(b.2.as_bytes()), c["input"]);
        }
    }
    assert_eq!(stop, whole["stop_reason"].as_str().unwrap());
}
