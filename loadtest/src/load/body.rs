//! Request bytes for aigw-load: chat-completion bodies that look like LLM traffic.
//!
//! Owns: turning a `BodySource` into the exact bytes each request sends (head +
//! body) into a reusable buffer, including the prompt choice behind
//! `--hit-ratio`. Does not own sending (`conn.rs`). A fixed body is built once
//! and shared; template bodies are rebuilt per request into the same buffer.

use super::config::{BodySource, LoadConfig, Target};
use std::sync::Arc;

/// The built-in chat-completion template. A few hundred bytes like a short
/// chat turn; `{{prompt}}` is what `--hit-ratio` varies.
pub const DEFAULT_TEMPLATE: &str = concat!(
    r#"{"model":"{{model}}","messages":["#,
    r#"{"role":"system","content":"You are a concise assistant. Answer in one short paragraph."},"#,
    r#"{"role":"user","content":"{{prompt}}"}],"#,
    r#""max_tokens":64,"temperature":0,"stream":{{stream}}}"#
);

/// What a prompt says around its identifying key; keeps bodies realistic in size.
const PROMPT_TEXT: &str =
    "Summarize the key points of benchmark document {} for a busy engineer, in plain words.";

enum Part {
    Literal(Vec<u8>),
    Prompt,
}

/// What every connection of one target shares: the request head prefix and
/// the body recipe.
pub struct RequestPlan {
    /// Request line and headers up to (not including) the Content-Length value.
    head_prefix: Vec<u8>,
    recipe: Recipe,
    hit_ratio: f64,
    pool_size: u64,
    /// Distinguishes "unique" prompts of this run from those of earlier runs,
    /// so a cache that outlives a run still sees them as misses.
    run_nonce: u64,
}

enum Recipe {
    Template(Vec<Part>),
    /// Whole request, head and body, built once.
    Fixed(Arc<[u8]>),
    Lines(Vec<Vec<u8>>),
}

impl RequestPlan {
    pub fn new(cfg: &LoadConfig, target: &Target, run_nonce: u64) -> RequestPlan {
        let mut head_prefix = Vec::with_capacity(256);
        head_prefix.extend_from_slice(
            format!(
                "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: aigw-load\r\n",
                cfg.method, target.path, target.authority
            )
            .as_bytes(),
        );
        let has_content_type = cfg
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !has_content_type {
            head_prefix.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        for (k, v) in &cfg.headers {
            head_prefix.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        head_prefix.extend_from_slice(b"Content-Length: ");
        let recipe = match &cfg.body {
            BodySource::Template(text) => {
                let text = text.as_deref().unwrap_or(DEFAULT_TEMPLATE);
                let text = text
                    .replace("{{model}}", &target.model)
                    .replace("{{stream}}", if cfg.stream { "true" } else { "false" });
                let mut parts = Vec::new();
                for (i, lit) in text.split("{{prompt}}").enumerate() {
                    if i > 0 {
                        parts.push(Part::Prompt);
                    }
                    parts.push(Part::Literal(lit.as_bytes().to_vec()));
                }
                Recipe::Template(parts)
            }
            BodySource::Fixed(body) => {
                let mut whole = head_prefix.clone();
                finish_request(&mut whole, body);
                Recipe::Fixed(whole.into())
            }
            BodySource::Lines(lines) => Recipe::Lines(lines.clone()),
        };
        RequestPlan {
            head_prefix,
            recipe,
            hit_ratio: cfg.hit_ratio,
            pool_size: cfg.pool_size.get() as u64,
            run_nonce,
        }
    }
}

/// Appends `len\r\n\r\nbody` to a head that ends in `Content-Length: `.
fn finish_request(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Per-connection request builder: its own counter, random stream and buffers.
pub struct RequestFactory {
    plan: Arc<RequestPlan>,
    /// Global connection index, part of unique prompts.
    conn: u64,
    sent: u64,
    rng: SplitMix64,
    body: Vec<u8>,
    request: Vec<u8>,
}

impl RequestFactory {
    pub fn new(plan: Arc<RequestPlan>, conn: usize) -> RequestFactory {
        let seed = plan.run_nonce ^ (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        RequestFactory {
            plan,
            conn: conn as u64,
            sent: 0,
            rng: SplitMix64(seed),
            body: Vec::with_capacity(1024),
            request: Vec::with_capacity(2048),
        }
    }

    /// The bytes of the next request.
    pub fn next_request(&mut self) -> &[u8] {
        let n = self.sent;
        self.sent += 1;
        let plan = &*self.plan;
        match &plan.recipe {
            Recipe::Fixed(whole) => whole,
            Recipe::Lines(lines) => {
                let line = &lines[((self.conn + n) % lines.len() as u64) as usize];
                self.request.clear();
                self.request.extend_from_slice(&plan.head_prefix);
                finish_request(&mut self.request, line);
                &self.request
            }
            Recipe::Template(parts) => {
                let pooled = plan.hit_ratio > 0.0 && self.rng.next_f64() < plan.hit_ratio;
                let key = if pooled {
                    format!("pool-{}", self.rng.next_u64() % plan.pool_size)
                } else {
                    format!("unique-{:x}-{}-{}", plan.run_nonce, self.conn, n)
                };
                let prompt = PROMPT_TEXT.replace("{}", &key);
                self.body.clear();
                for part in parts {
                    match part {
                        Part::Literal(bytes) => self.body.extend_from_slice(bytes),
                        Part::Prompt => self.body.extend_from_slice(prompt.as_bytes()),
                    }
                }
                self.request.clear();
                self.request.extend_from_slice(&plan.head_prefix);
                finish_request(&mut self.request, &self.body);
                &self.request
            }
        }
    }
}

/// A tiny, fast, seedable generator (Steele et al.'s SplitMix64); good enough
/// for picking prompts, and no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::config::{DEFAULT_POOL_SIZE, parse_target};
    use std::collections::HashSet;

    fn config(hit_ratio: f64) -> (LoadConfig, Target) {
        let target =
            parse_target("http://127.0.0.1:9/v1/chat/completions", "bench/m", false).unwrap();
        let mut cfg = LoadConfig::new(vec![target.clone()]);
        cfg.hit_ratio = hit_ratio;
        cfg.headers
            .push(("Authorization".into(), "Bearer k".into()));
        (cfg, target)
    }

    fn body_of(request: &[u8]) -> &[u8] {
        let at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        &request[at + 4..]
    }

    #[test]
    fn template_requests_are_valid_json_with_the_target_model() {
        let (cfg, target) = config(0.0);
        let mut f = RequestFactory::new(Arc::new(RequestPlan::new(&cfg, &target, 7)), 0);
        let req = f.next_request().to_vec();
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(text.starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(text.contains("Authorization: Bearer k\r\n"));
        let body = body_of(&req);
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["model"], "bench/m");
        assert_eq!(json["stream"], false);
    }

    fn distinct_prompts(hit_ratio: f64, requests: usize) -> usize {
        let (cfg, target) = config(hit_ratio);
        let mut f = RequestFactory::new(Arc::new(RequestPlan::new(&cfg, &target, 7)), 3);
        let set: HashSet<Vec<u8>> = (0..requests)
            .map(|_| body_of(f.next_request()).to_vec())
            .collect();
        set.len()
    }

    #[test]
    fn hit_ratio_sets_the_share_of_repeated_prompts() {
        assert_eq!(distinct_prompts(0.0, 1000), 1000);
        assert!(distinct_prompts(1.0, 1000) <= DEFAULT_POOL_SIZE);
        let half = distinct_prompts(0.5, 10_000);
        assert!((4_500..5_500).contains(&half), "{half}");
    }

    #[test]
    fn fixed_bodies_are_sent_verbatim() {
        let (mut cfg, target) = config(0.0);
        cfg.body = BodySource::Fixed(b"{\"x\":1}".to_vec());
        let mut f = RequestFactory::new(Arc::new(RequestPlan::new(&cfg, &target, 7)), 0);
        assert_eq!(body_of(f.next_request()), b"{\"x\":1}");
        assert!(
            f.next_request()
                .ends_with(b"Content-Length: 7\r\n\r\n{\"x\":1}")
        );
    }

    #[test]
    fn jsonl_bodies_go_round_robin() {
        let (mut cfg, target) = config(0.0);
        cfg.body = BodySource::Lines(vec![b"a".to_vec(), b"b".to_vec()]);
        let mut f = RequestFactory::new(Arc::new(RequestPlan::new(&cfg, &target, 7)), 0);
        let got: Vec<Vec<u8>> = (0..3).map(|_| body_of(f.next_request()).to_vec()).collect();
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()]);
    }
}
