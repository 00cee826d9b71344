//! An OpenAI chat completion request, written as an Anthropic Messages request.
//!
//! Values pass through byte for byte where the formats agree (texts, tool
//! schemas, ids, `cache_control` markers); shapes change where they differ:
//! system and developer messages become `system`, tool calls become
//! `tool_use` blocks and tool messages `tool_result` blocks, consecutive
//! messages of one role merge into one turn (Anthropic alternates roles),
//! images become `image` blocks (a `data:` URL as base64), `stop` becomes
//! `stop_sequences`, and `max_tokens` (required by Anthropic) gets a default.
//! Fields with no counterpart are dropped, since Anthropic refuses unknown
//! fields; the README's translation table lists them.

use crate::providers::translate::{self, Image, Obj, Result, TranslateError};
use std::ops::Range;

/// What the client asked for that the reply's translation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub stream: bool,
    /// `stream_options.include_usage`: a final usage chunk.
    pub include_usage: bool,
}

/// Writes the Messages request for the chat request `body` into `out`.
pub fn chat(body: &[u8], model: &str, default_max_tokens: u64, out: &mut Vec<u8>) -> Result<Asked> {
    if !translate::is_valid_json(body) {
        return Err(TranslateError::new("request body is not valid JSON"));
    }
    let top = Obj::document(body, "request body")?;
    if let Some(n) = top.get("n")?
        && n != b"1"
    {
        return Err(TranslateError::new(
            "`n` must be 1: Anthropic returns one answer per request",
        ));
    }
    let stream = flag(&top, "stream")?;
    let include_usage = match top.obj("stream_options")? {
        Some(o) => flag(&o, "include_usage")?,
        None => false,
    };
    out.clear();
    out.reserve(body.len() + 128);
    out.extend_from_slice(b"{\"model\":");
    translate::string(out, model);
    out.extend_from_slice(b",\"max_tokens\":");
    match top.get("max_completion_tokens")?.or(top.get("max_tokens")?) {
        Some(n) if n.iter().all(u8::is_ascii_digit) && !n.is_empty() => out.extend_from_slice(n),
        Some(_) => {
            return Err(TranslateError::new(
                "`max_tokens` must be a non-negative integer",
            ));
        }
        None => crate::http::push_decimal(out, default_max_tokens),
    }
    messages(&top, out)?;
    for name in ["temperature", "top_p", "top_k"] {
        if let Some(v) = top.get(name)? {
            if !crate::json::is_number(v) {
                return Err(TranslateError::new(format!("`{name}` must be a number")));
            }
            push_key(out, name);
            translate::raw(out, v);
        }
    }
    match top.get("stop")? {
        Some(s) if s.first() == Some(&b'"') => {
            push_key(out, "stop_sequences");
            out.push(b'[');
            translate::raw(out, s);
            out.push(b']');
        }
        Some(s) if s.first() == Some(&b'[') => {
            push_key(out, "stop_sequences");
            translate::raw(out, s);
        }
        Some(_) => {
            return Err(TranslateError::new(
                "`stop` must be a string or an array of strings",
            ));
        }
        None => {}
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
    }
    tools(&top, out)?;
    if let Some(user) = top.raw_str("user")? {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        translate::raw(out, user);
        out.push(b'}');
    }
    // Anthropic's own extended thinking, for clients that know it.
    if let Some(t) = top.get("thinking")? {
        push_key(out, "thinking");
        translate::raw(out, t);
    }
    out.push(b'}');
    Ok(Asked {
        stream,
        include_usage,
    })
}

fn flag(o: &Obj<'_>, name: &str) -> Result<bool> {
    match o.get(name)? {
        None | Some(b"false") => Ok(false),
        Some(b"true") => Ok(true),
        Some(_) => Err(TranslateError::new(format!(
            "`{name}` must be true or false"
        ))),
    }
}

fn push_key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// One Anthropic turn: its role and its content blocks, comma-separated.
struct Turn {
    user: bool,
    blocks: Vec<u8>,
}

/// The turn to add blocks to: the last one when it has this role (turns
/// alternate), else a new one.
fn turn(turns: &mut Vec<Turn>, user: bool) -> &mut Vec<u8> {
    if turns.last().is_none_or(|t| t.user != user) {
        turns.push(Turn {
            user,
            blocks: Vec::new(),
        });
    }
    let blocks = &mut turns.last_mut().expect("pushed").blocks;
    if !blocks.is_empty() {
        blocks.push(b',');
    }
    blocks
}

fn messages(top: &Obj<'_>, out: &mut Vec<u8>) -> Result<()> {
    let doc = top.doc();
    let list = top.array("messages")?;
    if list.is_empty() {
        return Err(TranslateError::new("`messages` must be a non-empty array"));
    }
    let mut system: Vec<u8> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = Obj::read(doc, r.clone(), &at)?;
        let role = m
            .str("role")?
            .ok_or_else(|| TranslateError::new(format!("`{at}.role` is required")))?;
        let content = m.range("content")?;
        match &*role {
            "system" | "developer" => {
                if let Some(c) = content {
                    let mut blocks = Vec::new();
                    content_blocks(doc, c, &at, &mut blocks, true)?;
                    if !blocks.is_empty() {
                        if !system.is_empty() {
                            system.push(b',');
                        }
                        system.extend_from_slice(&blocks);
                    }
                }
            }
            "user" => {
                let c = content
                    .ok_or_else(|| TranslateError::new(format!("`{at}.content` is required")))?;
                let mut blocks = Vec::new();
                content_blocks(doc, c, &at, &mut blocks, false)?;
                turn(&mut turns, true).extend_from_slice(&blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(c) = content {
                    content_blocks(doc, c, &at, &mut blocks, true)?;
                }
                for (j, call) in m.array("tool_calls")?.iter().enumerate() {
                    if !blocks.is_empty() {
                        blocks.push(b',');
                    }
                    tool_use(
                        doc,
                        call.clone(),
                        &format!("{at}.tool_calls[{j}]"),
                        &mut blocks,
                    )?;
                }
                if !blocks.is_empty() {
                    turn(&mut turns, false).extend_from_slice(&blocks);
                }
            }
            "tool" => {
                let id = m.raw_str("tool_call_id")?.ok_or_else(|| {
                    TranslateError::new(format!("`{at}.tool_call_id` is required"))
                })?;
                let blocks = turn(&mut turns, true);
                blocks.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
                translate::raw(blocks, id);
                if let Some(c) = content {
                    blocks.extend_from_slice(b",\"content\":");
                    if doc[c.start] == b'"' {
                        translate::raw(blocks, &doc[c]);
                    } else {
                        blocks.push(b'[');
                        content_blocks(doc, c, &at, blocks, false)?;
                        blocks.push(b']');
                    }
                }
                blocks.push(b'}');
            }
            other => {
                return Err(TranslateError::new(format!(
                    "`{at}.role` `{other}` cannot be sent to Anthropic; use system, developer, user, assistant or tool"
                )));
            }
        }
    }
    if !system.is_empty() {
        out.extend_from_slice(b",\"system\":[");
        out.extend_from_slice(&system);
        out.push(b']');
    }
    out.extend_from_slice(b",\"messages\":[");
    for (i, t) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(if t.user {
            b"{\"role\":\"user\",\"content\":["
        } else {
            b"{\"role\":\"assistant\",\"content\":["
        });
        out.extend_from_slice(&t.blocks);
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    Ok(())
}

/// Appends the blocks of an OpenAI `content` (a string or an array of parts)
/// to `out`, comma-separated. `skip_empty`: an empty string gives no block.
fn content_blocks(
    doc: &[u8],
    c: Range<usize>,
    at: &str,
    out: &mut Vec<u8>,
    skip_empty: bool,
) -> Result<()> {
    let start = out.len();
    let sep = |out: &mut Vec<u8>| {
        if out.len() > start {
            out.push(b',');
        }
    };
    match doc[c.start] {
        b'"' => {
            if !(skip_empty && &doc[c.clone()] == b"\"\"") {
                out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                translate::raw(out, &doc[c]);
                out.push(b'}');
            }
        }
        b'[' => {
            for (j, p) in translate::elements(doc, c, at)?.iter().enumerate() {
                let pat = format!("{at}.content[{j}]");
                let part = Obj::read(doc, p.clone(), &pat)?;
                let kind = part
                    .str("type")?
                    .ok_or_else(|| TranslateError::new(format!("`{pat}.type` is required")))?;
                match &*kind {
                    "text" | "refusal" => {
                        let text = part.raw_str(&kind)?.ok_or_else(|| {
                            TranslateError::new(format!("`{pat}.{kind}` is required"))
                        })?;
                        if skip_empty && text == b"\"\"" {
                            continue;
                        }
                        sep(out);
                        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                        translate::raw(out, text);
                    }
                    "image_url" => {
                        sep(out);
                        image(&part, &pat, out)?;
                    }
                    // Anthropic's own blocks, from clients that know them.
                    "image" | "document" | "thinking" | "redacted_thinking" | "search_result" => {
                        sep(out);
                        translate::raw(out, &doc[p.clone()]);
                        continue;
                    }
                    other => {
                        return Err(TranslateError::new(format!(
                            "`{pat}.type` `{other}` cannot be sent to Anthropic; use text or image_url"
                        )));
                    }
                }
                if let Some(cc) = part.get("cache_control")? {
                    out.extend_from_slice(b",\"cache_control\":");
                    translate::raw(out, cc);
                }
                out.push(b'}');
            }
        }
        _ => {
            return Err(TranslateError::new(format!(
                "`{at}.content` must be a string or an array of parts"
            )));
        }
    }
    Ok(())
}

/// An `image_url` part as an `image` block, left open for `cache_control`.
fn image(part: &Obj<'_>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    let url = translate::image_url(part, at)?;
    out.extend_from_slice(b"{\"type\":\"image\",\"source\":");
    match translate::image(&url, at, "Anthropic")? {
        Image::Base64 { media, data } => {
            out.extend_from_slice(b"{\"type\":\"base64\",\"media_type\":");
            translate::string(out, media);
            out.extend_from_slice(b",\"data\":");
            translate::string(out, data);
        }
        Image::Url(url) => {
            out.extend_from_slice(b"{\"type\":\"url\",\"url\":");
            translate::string(out, url);
        }
    }
    out.push(b'}');
    Ok(())
}

/// An assistant's tool call as a `tool_use` block.
fn tool_use(doc: &[u8], call: Range<usize>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    let c = Obj::read(doc, call, at)?;
    let id = c
        .raw_str("id")?
        .ok_or_else(|| TranslateError::new(format!("`{at}.id` is required")))?;
    let f = c
        .obj("function")?
        .ok_or_else(|| TranslateError::new(format!("`{at}.function` is required")))?;
    let name = f
        .raw_str("name")?
        .ok_or_else(|| TranslateError::new(format!("`{at}.function.name` is required")))?;
    let args = f.str("arguments")?.unwrap_or_default();
    out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
    translate::raw(out, id);
    out.extend_from_slice(b",\"name\":");
    translate::raw(out, name);
    out.extend_from_slice(b",\"input\":");
    translate::arguments_object(&args, at, out)?;
    out.push(b'}');
    Ok(())
}

/// `tools`, `tool_choice` and `parallel_tool_calls`.
fn tools(top: &Obj<'_>, out: &mut Vec<u8>) -> Result<()> {
    let doc = top.doc();
    let list = top.array("tools")?;
    if !list.is_empty() {
        out.extend_from_slice(b",\"tools\":[");
        for (i, r) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let at = format!("tools[{i}]");
            let t = Obj::read(doc, r.clone(), &at)?;
            if t.str("type")?.as_deref() != Some("function") {
                // Anthropic's server tools (web search, ...) pass as they are.
                translate::raw(out, &doc[r.clone()]);
                continue;
            }
            let f = t
                .obj("function")?
                .ok_or_else(|| TranslateError::new(format!("`{at}.function` is required")))?;
            let name = f
                .raw_str("name")?
                .ok_or_else(|| TranslateError::new(format!("`{at}.function.name` is required")))?;
            out.extend_from_slice(b"{\"name\":");
            translate::raw(out, name);
            if let Some(d) = f.raw_str("description")? {
                out.extend_from_slice(b",\"description\":");
                translate::raw(out, d);
            }
            out.extend_from_slice(b",\"input_schema\":");
            match f.get("parameters")? {
                Some(p) => translate::raw(out, p),
                None => out.extend_from_slice(b"{\"type\":\"object\",\"properties\":{}}"),
            }
            if let Some(cc) = t.get("cache_control")? {
                out.extend_from_slice(b",\"cache_control\":");
                translate::raw(out, cc);
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    let serial = top.get("parallel_tool_calls")? == Some(b"false");
    let choice = match top.get("tool_choice")? {
        None => None,
        Some(b"\"auto\"") => Some("\"auto\"".to_string()),
        Some(b"\"none\"") => Some("\"none\"".to_string()),
        Some(b"\"required\"") => Some("\"any\"".to_string()),
        Some(raw) if raw.first() == Some(&b'{') => {
            let c = top.obj("tool_choice")?.expect("an object");
            let name = c
                .obj("function")?
                .map(|f| f.raw_str("name"))
                .transpose()?
                .flatten()
                .ok_or_else(|| TranslateError::new("`tool_choice.function.name` is required"))?;
            Some(format!(
                "\"tool\",\"name\":{}",
                String::from_utf8_lossy(name)
            ))
        }
        Some(_) => {
            return Err(TranslateError::new(
                "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
            ));
        }
    };
    let choice = match (choice, serial) {
        (None, true) if !list.is_empty() => Some("\"auto\"".to_string()),
        (c, _) => c,
    };
    if let Some(kind) = choice {
        out.extend_from_slice(b",\"tool_choice\":{\"type\":");
        out.extend_from_slice(kind.as_bytes());
        if serial && kind != "\"none\"" {
            out.extend_from_slice(b",\"disable_parallel_tool_use\":true");
        }
        out.push(b'}');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(body: &str) -> simd_json::OwnedValue {
        let mut out = Vec::new();
        chat(body.as_bytes(), "claude-x", 1024, &mut out).unwrap();
        crate::providers::translate::parse(&out)
    }

    use simd_json::prelude::*;

    #[test]
    fn system_turns_and_defaults_are_written_the_anthropic_way() {
        let v = translated(
            r#"{"model":"anthropic/claude-x","messages":[{"role":"system","content":"be brief"},{"role":"developer","content":[{"type":"text","text":"cached","cache_control":{"type":"ephemeral"}}]},{"role":"user","content":"hi"},{"role":"user","content":"again"},{"role":"assistant","content":"hello"}],"temperature":0.5,"stop":"END","stream":true,"stream_options":{"include_usage":true},"presence_penalty":1,"user":"u1"}"#,
        );
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["max_tokens"], 1024);
        assert_eq!(v["system"][0]["text"], "be brief");
        assert_eq!(v["system"][1]["cache_control"]["type"], "ephemeral");
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2, "two user messages merge into one turn");
        assert_eq!(msgs[0]["content"][1]["text"], "again");
        assert_eq!(msgs[1]["role"], "assistant");
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["stop_sequences"][0], "END");
        assert_eq!(v["stream"], true);
        assert_eq!(v["metadata"]["user_id"], "u1");
        assert!(v.get("presence_penalty").is_none() && v.get("stream_options").is_none());
    }

    #[test]
    fn tool_calls_and_results_round_trip_with_their_ids() {
        let v = translated(
            r#"{"model":"m","max_completion_tokens":50,"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_2","type":"function","function":{"name":"get_time","arguments":""}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"},{"role":"tool","tool_call_id":"call_2","content":"noon"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},"parallel_tool_calls":false}"#,
        );
        assert_eq!(v["max_tokens"], 50);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][0]["id"], "call_1");
        assert_eq!(msgs[1]["content"][0]["input"]["city"], "Paris");
        assert_eq!(msgs[1]["content"][1]["input"].as_object().unwrap().len(), 0);
        assert_eq!(msgs[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(msgs[2]["content"][1]["content"], "noon");
        assert_eq!(
            v["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(v["tool_choice"]["type"], "tool");
        assert_eq!(v["tool_choice"]["name"], "get_weather");
        assert_eq!(v["tool_choice"]["disable_parallel_tool_use"], true);
    }

    #[test]
    fn images_become_url_or_base64_blocks() {
        let v = translated(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"https://x.test/a.png"}},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}"#,
        );
        let c = &v["messages"][0]["content"];
        assert_eq!(c[1]["source"]["type"], "url");
        assert_eq!(c[1]["source"]["url"], "https://x.test/a.png");
        assert_eq!(c[2]["source"]["type"], "base64");
        assert_eq!(c[2]["source"]["media_type"], "image/png");
        assert_eq!(c[2]["source"]["data"], "iVBORw0KGgo=");
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let err = |body: &str| {
            chat(body.as_bytes(), "m", 1, &mut Vec::new())
                .unwrap_err()
                .0
        };
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#).contains("`n`"));
        assert!(err(r#"{"messages":[]}"#).contains("messages"));
        assert!(
            err(r#"{"messages":[{"role":"user","content":"x","role":"system"}]}"#)
                .contains("more than once")
        );
        assert!(
            err(r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#)
                .contains("input_audio")
        );
        assert!(err(r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":"[1]"}}]}]}"#).contains("arguments"));
        assert!(
            err(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"5"}"#)
                .contains("max_tokens")
        );
        assert!(err(r#"{"messages":[{"role":"user","content":"\x"}]}"#).contains("not valid JSON"));
    }
}
