//! An OpenAI chat completion request, written as a Gemini `generateContent`
//! request: system and developer messages become `systemInstruction`, turns
//! become `contents` with roles `user` and `model` (consecutive turns of one
//! role merge), text and images become parts (`inlineData` for a data URL,
//! `fileData` for a URL), tool calls become `functionCall` parts and tool
//! messages `functionResponse` parts (named after the call they answer),
//! tools become `functionDeclarations`, `tool_choice` becomes `toolConfig`,
//! and the sampling fields go into `generationConfig`.

use crate::providers::translate::{self, Image, Obj, Result, TranslateError};
use std::ops::Range;

/// Writes the Gemini request for the chat request `body`; returns whether
/// the client asked for a stream, and for a final usage chunk.
pub fn chat(body: &[u8], out: &mut Vec<u8>) -> Result<(bool, bool)> {
    if !translate::is_valid_json(body) {
        return Err(TranslateError::new("request body is not valid JSON"));
    }
    let top = Obj::document(body, "request body")?;
    let doc = top.doc();
    if let Some(n) = top.get("n")?
        && n != b"1"
    {
        return Err(TranslateError::new(
            "`n` must be 1: aigw asks Gemini for one candidate",
        ));
    }
    let stream = top.get("stream")? == Some(b"true");
    let include_usage = top
        .obj("stream_options")?
        .map(|o| o.get("include_usage"))
        .transpose()?
        .flatten()
        == Some(b"true");
    out.clear();
    out.reserve(body.len() + 128);
    // Tool call ids to function names: a tool message names only the id.
    let mut names: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut system = Vec::new();
    let mut turns: Vec<(bool, Vec<u8>)> = Vec::new();
    for (i, r) in top.array("messages")?.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = Obj::read(doc, r.clone(), &at)?;
        let role = m
            .str("role")?
            .ok_or_else(|| TranslateError::new(format!("`{at}.role` is required")))?;
        let content = m.range("content")?;
        let (user, parts) = match &*role {
            "system" | "developer" => {
                if let Some(c) = content {
                    parts_of(doc, c, &at, &mut system)?;
                }
                continue;
            }
            "user" => {
                let mut p = Vec::new();
                if let Some(c) = content {
                    parts_of(doc, c, &at, &mut p)?;
                }
                (true, p)
            }
            "assistant" => {
                let mut p = Vec::new();
                if let Some(c) = content {
                    parts_of(doc, c, &at, &mut p)?;
                }
                for (j, call) in m.array("tool_calls")?.iter().enumerate() {
                    let cat = format!("{at}.tool_calls[{j}]");
                    let c = Obj::read(doc, call.clone(), &cat)?;
                    let f = c.obj("function")?.ok_or_else(|| {
                        TranslateError::new(format!("`{cat}.function` is required"))
                    })?;
                    let name = f.raw_str("name")?.ok_or_else(|| {
                        TranslateError::new(format!("`{cat}.function.name` is required"))
                    })?;
                    if let Some(id) = c.raw_str("id")? {
                        names.push((id.to_vec(), name.to_vec()));
                    }
                    let args = f.str("arguments")?.unwrap_or_default();
                    if !p.is_empty() {
                        p.push(b',');
                    }
                    p.extend_from_slice(b"{\"functionCall\":{\"name\":");
                    translate::raw(&mut p, name);
                    p.extend_from_slice(b",\"args\":");
                    // A signature Gemini gave the call rides in its id.
                    let signature = c.str("id")?.and_then(|id| {
                        id.split_once(super::reply::SIGNATURE_MARK)
                            .map(|(_, sig)| sig.to_string())
                    });
                    translate::arguments_object(&args, &cat, &mut p)?;
                    p.push(b'}');
                    if let Some(sig) = signature {
                        p.extend_from_slice(b",\"thoughtSignature\":");
                        translate::string(&mut p, &sig);
                    }
                    p.push(b'}');
                }
                (false, p)
            }
            "tool" => {
                let id = m.raw_str("tool_call_id")?.ok_or_else(|| {
                    TranslateError::new(format!("`{at}.tool_call_id` is required"))
                })?;
                // The latest call of that id (ids may repeat across turns).
                let name = names
                    .iter()
                    .rev()
                    .find(|(i, _)| i.as_slice() == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        TranslateError::new(format!(
                            "`{at}.tool_call_id` answers no tool call of an earlier assistant message (Gemini needs the function's name)"
                        ))
                    })?;
                let mut p = Vec::new();
                p.extend_from_slice(b"{\"functionResponse\":{\"name\":");
                p.extend_from_slice(&name);
                p.extend_from_slice(b",\"response\":{\"content\":");
                match content {
                    Some(c) if doc[c.start] == b'"' => translate::raw(&mut p, &doc[c]),
                    Some(c) => {
                        let mut text = String::new();
                        for part in translate::elements(doc, c, &at)? {
                            let o = Obj::read(doc, part, &at)?;
                            text.push_str(&o.str("text")?.unwrap_or_default());
                        }
                        translate::string(&mut p, &text);
                    }
                    None => p.extend_from_slice(b"\"\""),
                }
                p.extend_from_slice(b"}}}");
                (true, p)
            }
            other => {
                return Err(TranslateError::new(format!(
                    "`{at}.role` `{other}` cannot be sent to Gemini; use system, developer, user, assistant or tool"
                )));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((u, p)) if *u == user => {
                p.push(b',');
                p.extend_from_slice(&parts);
            }
            _ => turns.push((user, parts)),
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::new(
            "`messages` must hold a user or assistant message",
        ));
    }
    out.extend_from_slice(b"{\"contents\":[");
    for (i, (user, parts)) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(if *user {
            b"{\"role\":\"user\",\"parts\":["
        } else {
            b"{\"role\":\"model\",\"parts\":["
        });
        out.extend_from_slice(parts);
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    if !system.is_empty() {
        out.extend_from_slice(b",\"systemInstruction\":{\"parts\":[");
        out.extend_from_slice(&system);
        out.extend_from_slice(b"]}");
    }
    generation_config(&top, out)?;
    tools(&top, out)?;
    out.push(b'}');
    Ok((stream, include_usage))
}

/// Appends the parts of an OpenAI `content` (comma-separated).
fn parts_of(doc: &[u8], c: Range<usize>, at: &str, out: &mut Vec<u8>) -> Result<()> {
    let sep = |out: &mut Vec<u8>| {
        if !out.is_empty() {
            out.push(b',');
        }
    };
    match doc[c.start] {
        b'"' => {
            if &doc[c.clone()] != b"\"\"" {
                sep(out);
                out.extend_from_slice(b"{\"text\":");
                translate::raw(out, &doc[c]);
                out.push(b'}');
            }
        }
        b'[' => {
            for (j, p) in translate::elements(doc, c, at)?.iter().enumerate() {
                let pat = format!("{at}.content[{j}]");
                let part = Obj::read(doc, p.clone(), &pat)?;
                match part.str("type")?.as_deref() {
                    Some("text") => {
                        sep(out);
                        out.extend_from_slice(b"{\"text\":");
                        translate::raw(out, part.raw_str("text")?.unwrap_or(b"\"\""));
                        out.push(b'}');
                    }
                    Some("image_url") => {
                        let url = translate::image_url(&part, &pat)?;
                        sep(out);
                        match translate::image(&url, &pat, "Gemini")? {
                            Image::Base64 { media, data } => {
                                out.extend_from_slice(b"{\"inlineData\":{\"mimeType\":");
                                translate::string(out, media);
                                out.extend_from_slice(b",\"data\":");
                                translate::string(out, data);
                            }
                            Image::Url(url) => {
                                out.extend_from_slice(b"{\"fileData\":{\"mimeType\":");
                                translate::string(out, mime_of(url));
                                out.extend_from_slice(b",\"fileUri\":");
                                translate::string(out, url);
                            }
                        }
                        out.extend_from_slice(b"}}");
                    }
                    other => {
                        return Err(TranslateError::new(format!(
                            "`{pat}.type` `{}` cannot be sent to Gemini; use text or image_url",
                            other.unwrap_or("")
                        )));
                    }
                }
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

/// An image's type from its URL's extension (Gemini wants one with a URL).
fn mime_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

fn generation_config(top: &Obj<'_>, out: &mut Vec<u8>) -> Result<()> {
    let mut g = Vec::new();
    let put = |g: &mut Vec<u8>, key: &str, v: &[u8]| {
        g.push(if g.is_empty() { b'{' } else { b',' });
        g.push(b'"');
        g.extend_from_slice(key.as_bytes());
        g.extend_from_slice(b"\":");
        g.extend_from_slice(v);
    };
    if let Some(n) = top.get("max_completion_tokens")?.or(top.get("max_tokens")?) {
        if !crate::json::is_number(n) {
            return Err(TranslateError::new("`max_tokens` must be a number"));
        }
        put(&mut g, "maxOutputTokens", n);
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ] {
        if let Some(v) = top.get(from)? {
            if !crate::json::is_number(v) {
                return Err(TranslateError::new(format!("`{from}` must be a number")));
            }
            put(&mut g, to, v);
        }
    }
    match top.get("stop")? {
        Some(s) if s.first() == Some(&b'"') => {
            let mut list = vec![b'['];
            list.extend_from_slice(s);
            list.push(b']');
            put(&mut g, "stopSequences", &list);
        }
        Some(s) if s.first() == Some(&b'[') => put(&mut g, "stopSequences", s),
        Some(_) => {
            return Err(TranslateError::new(
                "`stop` must be a string or an array of strings",
            ));
        }
        None => {}
    }
    if let Some(f) = top.obj("response_format")? {
        match f.str("type")?.as_deref() {
            Some("json_object") => put(&mut g, "responseMimeType", b"\"application/json\""),
            // Structured output: the JSON Schema as written (Gemini's
            // `responseJsonSchema` takes JSON Schema, as `parametersJsonSchema`
            // does for tools).
            Some("json_schema") => {
                let schema = match f.obj("json_schema")? {
                    Some(j) => j.get("schema")?,
                    None => None,
                };
                put(&mut g, "responseMimeType", b"\"application/json\"");
                match schema {
                    Some(s) if s.first() == Some(&b'{') => put(&mut g, "responseJsonSchema", s),
                    Some(_) => {
                        return Err(TranslateError::new(
                            "`response_format.json_schema.schema` must be an object",
                        ));
                    }
                    None => {}
                }
            }
            Some("text") | None => {}
            Some(other) => {
                return Err(TranslateError::new(format!(
                    "`response_format.type` `{other}` is not text, json_object or json_schema"
                )));
            }
        }
    }
    if !g.is_empty() {
        g.push(b'}');
        out.extend_from_slice(b",\"generationConfig\":");
        out.extend_from_slice(&g);
    }
    Ok(())
}

fn tools(top: &Obj<'_>, out: &mut Vec<u8>) -> Result<()> {
    let doc = top.doc();
    let list = top.array("tools")?;
    if !list.is_empty() {
        out.extend_from_slice(b",\"tools\":[{\"functionDeclarations\":[");
        for (i, r) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            let t = Obj::read(doc, r.clone(), &at)?;
            let f = t
                .obj("function")?
                .ok_or_else(|| TranslateError::new(format!("`{at}.function` is required")))?;
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            translate::raw(
                out,
                f.raw_str("name")?.ok_or_else(|| {
                    TranslateError::new(format!("`{at}.function.name` is required"))
                })?,
            );
            if let Some(d) = f.raw_str("description")? {
                out.extend_from_slice(b",\"description\":");
                translate::raw(out, d);
            }
            // Full JSON Schema (`parameters` takes only an OpenAPI subset).
            if let Some(p) = f.get("parameters")? {
                out.extend_from_slice(b",\"parametersJsonSchema\":");
                translate::raw(out, p);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}]");
    }
    let mode: Option<(&str, Option<&[u8]>)> = match top.get("tool_choice")? {
        None => None,
        Some(b"\"auto\"") => Some(("AUTO", None)),
        Some(b"\"none\"") => Some(("NONE", None)),
        Some(b"\"required\"") => Some(("ANY", None)),
        Some(raw) if raw.first() == Some(&b'{') => {
            let c = top.obj("tool_choice")?.expect("an object");
            let name = c
                .obj("function")?
                .map(|f| f.raw_str("name"))
                .transpose()?
                .flatten()
                .ok_or_else(|| TranslateError::new("`tool_choice.function.name` is required"))?;
            Some(("ANY", Some(name)))
        }
        Some(_) => {
            return Err(TranslateError::new(
                "`tool_choice` must be \"auto\", \"none\", \"required\" or a function",
            ));
        }
    };
    if let Some((mode, name)) = mode {
        out.extend_from_slice(b",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"");
        out.extend_from_slice(mode.as_bytes());
        out.push(b'"');
        if let Some(n) = name {
            out.extend_from_slice(b",\"allowedFunctionNames\":[");
            out.extend_from_slice(n);
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    use crate::providers::translate::parse;

    #[test]
    fn a_chat_request_becomes_generate_content() {
        let body = br#"{"model":"g","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAA="}},{"type":"image_url","image_url":{"url":"https://x.test/a.webp"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"}],"max_tokens":99,"temperature":0.2,"stop":["X"],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},"stream":true,"stream_options":{"include_usage":true}}"#;
        let mut out = Vec::new();
        assert_eq!(chat(body, &mut out).unwrap(), (true, true));
        let v = parse(&out);
        assert_eq!(v["systemInstruction"]["parts"][0]["text"], "be brief");
        let c = v["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["parts"][1]["inlineData"]["mimeType"], "image/png");
        assert_eq!(c[0]["parts"][2]["fileData"]["mimeType"], "image/webp");
        assert_eq!(c[1]["role"], "model");
        assert_eq!(c[1]["parts"][0]["functionCall"]["args"]["city"], "Paris");
        assert_eq!(c[2]["parts"][0]["functionResponse"]["name"], "get_weather");
        assert_eq!(
            c[2]["parts"][0]["functionResponse"]["response"]["content"],
            "sunny"
        );
        let g = &v["generationConfig"];
        assert_eq!(g["maxOutputTokens"], 99);
        assert_eq!(g["stopSequences"][0], "X");
        assert_eq!(
            v["tools"][0]["functionDeclarations"][0]["name"],
            "get_weather"
        );
        let fc = &v["toolConfig"]["functionCallingConfig"];
        assert_eq!(fc["mode"], "ANY");
        assert_eq!(fc["allowedFunctionNames"][0], "get_weather");
    }

    #[test]
    fn a_thought_signature_in_a_call_id_goes_back_with_the_call() {
        let body = br#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"call_r_0~sig~AbC+/=","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"call_r_0~sig~AbC+/=","content":"ok"}]}"#;
        let mut out = Vec::new();
        chat(body, &mut out).unwrap();
        let v = parse(&out);
        let part = &v["contents"][1]["parts"][0];
        assert_eq!(part["thoughtSignature"], "AbC+/=");
        assert_eq!(part["functionCall"]["name"], "f");
        assert_eq!(
            v["contents"][2]["parts"][0]["functionResponse"]["name"],
            "f"
        );
    }

    #[test]
    fn response_formats_become_gemini_structured_output() {
        let body = br#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"r","strict":true,"schema":{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}}}}"#;
        let mut out = Vec::new();
        chat(body, &mut out).unwrap();
        let v = parse(&out);
        let g = &v["generationConfig"];
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(
            g["responseJsonSchema"]["properties"]["n"]["type"],
            "integer"
        );
        assert_eq!(g["responseJsonSchema"]["required"][0], "n");
        let body = br#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#;
        let mut out = Vec::new();
        chat(body, &mut out).unwrap();
        let v = parse(&out);
        assert_eq!(
            v["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert!(v["generationConfig"].get("responseJsonSchema").is_none());
        let body =
            br#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}"#;
        let mut out = Vec::new();
        chat(body, &mut out).unwrap();
        assert!(parse(&out).get("generationConfig").is_none());
        for bad in [
            br#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#.as_slice(),
            br#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":[1]}}}"#,
        ] {
            assert!(chat(bad, &mut Vec::new()).unwrap_err().0.contains("response_format"));
        }
    }

    #[test]
    fn a_tool_message_without_its_call_is_refused() {
        let body = br#"{"messages":[{"role":"tool","tool_call_id":"x","content":"y"}]}"#;
        assert!(
            chat(body, &mut Vec::new())
                .unwrap_err()
                .0
                .contains("tool_call_id")
        );
    }
}
