//! The Gemini API shape (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`): a whole response, a stream of partial
//! responses (the last with the finish reason and `usageMetadata`), Google
//! error bodies, and function calls for a request that forces one.
//!
//! Shapes bytes only, like `reply.rs`; `conn.rs` frames and times them.

use super::reply::{self, completion_tokens, piece};
use serde_json::{Value, json};

/// The model a Gemini path names, and whether it asks for a stream.
pub fn route(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    if let Some(model) = rest.strip_suffix(":generateContent") {
        Some((model, false))
    } else {
        rest.strip_suffix(":streamGenerateContent")
            .map(|model| (model, true))
    }
}

/// One Gemini answer.
pub struct Response {
    pub id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub reply_bytes: usize,
    /// A forced function call: its name and arguments (JSON text).
    pub call: Option<(String, String)>,
}

impl Response {
    fn output_tokens(&self) -> u64 {
        match &self.call {
            Some((_, args)) => completion_tokens(args.len()),
            None => completion_tokens(self.reply_bytes),
        }
    }

    fn event(&self, parts: Value, last: bool) -> Value {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut v = json!({"modelVersion": self.model, "responseId": self.id});
        if last {
            candidate["finishReason"] = json!("STOP");
            let out = self.output_tokens();
            v["usageMetadata"] = json!({
                "promptTokenCount": self.prompt_tokens,
                "candidatesTokenCount": out,
                "totalTokenCount": self.prompt_tokens + out,
            });
        }
        v["candidates"] = json!([candidate]);
        v
    }

    fn call_part(&self) -> Option<Value> {
        let (name, args) = self.call.as_ref()?;
        let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        Some(json!([{"functionCall": {"name": name, "args": args}}]))
    }

    /// The whole response body.
    pub fn push_body(&self, out: &mut Vec<u8>) {
        let parts = self
            .call_part()
            .unwrap_or_else(|| json!([{"text": reply::reply_text(self.reply_bytes)}]));
        let _ = serde_json::to_writer(&mut *out, &self.event(parts, true));
    }

    /// The streamed events (`data: {...}\r\n\r\n`), `n` text pieces.
    pub fn events(&self, n: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut push = |v: Value| {
            let mut e = b"data: ".to_vec();
            let _ = serde_json::to_writer(&mut e, &v);
            e.extend_from_slice(b"\r\n\r\n");
            out.push(e);
        };
        if let Some(parts) = self.call_part() {
            push(self.event(parts, true));
            return out;
        }
        let text = reply::reply_text(self.reply_bytes);
        let n = n.max(1);
        for i in 0..n {
            let (a, b) = piece(text.len(), i, n);
            push(self.event(json!([{"text": &text[a..b]}]), i + 1 == n));
        }
        out
    }
}

/// A Google error body: `{"error":{"code","message","status"}}`.
pub fn push_error(out: &mut Vec<u8>, status: u16, message: &str) {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {"code": status, "message": message, "status": name}});
    let _ = serde_json::to_writer(&mut *out, &body);
}

/// The `stream-error` fault's only event: a Google error.
pub fn push_error_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    push_error(out, 503, "The model is overloaded. (mock stream error)");
    out.extend_from_slice(b"\r\n\r\n");
}

/// The function a request forces (`toolConfig.functionCallingConfig.mode`
/// `ANY`: the first allowed name, else the first declaration), with
/// arguments that fit its parameters.
pub fn forced_call(request: &Value) -> Option<(String, String)> {
    let config = request.get("toolConfig")?.get("functionCallingConfig")?;
    if config.get("mode")?.as_str()? != "ANY" {
        return None;
    }
    let decls = request
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| t.get("functionDeclarations")?.as_array())
        .flatten()
        .collect::<Vec<_>>();
    let name = match config
        .get("allowedFunctionNames")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
    {
        Some(n) => n.to_owned(),
        None => decls.first()?.get("name")?.as_str()?.to_owned(),
    };
    let decl = decls
        .iter()
        .find(|d| d.get("name").and_then(Value::as_str) == Some(&name))?;
    // The same argument rules as the other shapes.
    let schema = decl
        .get("parametersJsonSchema")
        .or_else(|| decl.get("parameters"));
    let forced = json!({"tools": [{"name": name, "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": name}});
    super::anthropic::forced_tool(&forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_model_and_the_stream() {
        assert_eq!(
            route("/v1beta/models/gemini-x:generateContent"),
            Some(("gemini-x", false))
        );
        assert_eq!(
            route("/v1beta/models/gemini-x:streamGenerateContent"),
            Some(("gemini-x", true))
        );
        assert_eq!(route("/v1/chat/completions"), None);
    }

    #[test]
    fn a_forced_function_is_called_and_a_stream_ends_with_usage() {
        let req = json!({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}});
        let call = forced_call(&req).unwrap();
        assert_eq!(call, ("f".to_string(), r#"{"n":1}"#.to_string()));
        let r = Response {
            id: "r".into(),
            model: "g".into(),
            prompt_tokens: 3,
            reply_bytes: 20,
            call: None,
        };
        let events = r.events(4);
        assert_eq!(events.len(), 4);
        let last = std::str::from_utf8(events.last().unwrap()).unwrap();
        let v: Value = serde_json::from_str(last.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);
    }
}
