//! aigw-mock over real sockets: a plain blocking `std::net::TcpStream` client
//! talks to an in-process `MockServer` on port 0. No test sleeps to wait;
//! timing assertions measure what arrived when.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use aigw_loadtest::mock::{
    CAPTURE_CAPACITY, EMBEDDING_DIMS, ErrorKind, MockConfig, MockServer, Stall, completion_tokens,
    prompt_tokens, reply_text,
};
use serde_json::Value;

/// Upper bound on any single read, so a broken mock fails a test instead of
/// hanging the suite.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn start(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg).expect("mock starts")
}

fn mock() -> MockServer {
    start(MockConfig::default())
}

/// A raw POST with a JSON body and extra header lines.
fn post(path: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: mock\r\n\r\n").into_bytes()
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// One HTTP response as the client saw it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Chunked answers: each chunk's data and when it arrived.
    chunks: Vec<(Vec<u8>, Instant)>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The JSON of every `data:` event except `[DONE]`, and whether `[DONE]`
    /// came last.
    fn events(&self) -> (Vec<Value>, bool) {
        let mut events = Vec::new();
        let mut done = false;
        for (chunk, _) in &self.chunks {
            let text = std::str::from_utf8(chunk).expect("utf-8 event");
            let data = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("one event per chunk, got {text:?}"));
            assert!(!done, "nothing may follow [DONE]");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).expect("event is JSON"));
            }
        }
        (events, done)
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(server: &MockServer) -> Client {
        let stream = TcpStream::connect(server.addr()).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    fn call(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read().expect("response")
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read(&mut self) -> io::Result<Response> {
        let status_line = self.read_line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.clone()))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.read_line()?, 16)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let mut data = vec![0; size + 2];
                self.reader.read_exact(&mut data)?;
                assert_eq!(&data[size..], b"\r\n", "chunk ends in CRLF");
                if size == 0 {
                    break;
                }
                data.truncate(size);
                response.body.extend_from_slice(&data);
                response.chunks.push((data, Instant::now()));
            }
        } else {
            let len: usize = response
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            response.body = vec![0; len];
            self.reader.read_exact(&mut response.body)?;
        }
        Ok(response)
    }

    /// Reads until the server closes; returns what arrived or the error.
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).map(|_| rest)
    }
}

#[test]
fn chat_completion_round_trip_echoes_the_model_and_reports_usage() {
    for shards in [1, 2] {
        let server = start(MockConfig {
            shards,
            reply_bytes: 50,
            ..MockConfig::default()
        });
        let mut client = Client::connect(&server);
        let response = client.call(&post("/v1/chat/completions", CHAT, &[]));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let v = response.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], reply_text(50));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let prompt = prompt_tokens(CHAT.len());
        assert_eq!(v["usage"]["prompt_tokens"], prompt);
        assert_eq!(v["usage"]["completion_tokens"], completion_tokens(50));
        assert_eq!(v["usage"]["total_tokens"], prompt + completion_tokens(50));
    }
}

#[test]
fn stream_with_include_usage_sends_n_chunks_then_usage_then_done_as_they_happen() {
    let interval = Duration::from_millis(40);
    let server = start(MockConfig {
        chunks: 4,
        chunk_interval: interval,
        reply_bytes: 30,
        ..MockConfig::default()
    });
    let mut client = Client::connect(&server);
    let response = client.call(&post("/v1/chat/completions", CHAT_STREAM_USAGE, &[]));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));

    let (events, done) = response.events();
    assert!(done, "stream ends with data: [DONE]");
    assert_eq!(
        events.len(),
        4 + 1,
        "four content chunks and one usage chunk"
    );
    let mut text = String::new();
    for (i, event) in events[..4].iter().enumerate() {
        assert_eq!(event["object"], "chat.completion.chunk");
        assert_eq!(event["model"], "gpt-4o-mini");
        assert!(event["usage"].is_null() && event.get("usage").is_some());
        text.push_str(event["choices"][0]["delta"]["content"].as_str().unwrap());
        let finish = &event["choices"][0]["finish_reason"];
        assert_eq!(finish.as_str(), (i == 3).then_some("stop"));
    }
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text, reply_text(30));
    let usage_chunk = &events[4];
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        completion_tokens(30)
    );

    // The first event was on the wire three intervals before the last one
    // left: the mock streams, it does not buffer the answer.
    let first = response.chunks[0].1;
    let last = response.chunks[3].1;
    assert!(
        last.duration_since(first) >= interval * 3 - Duration::from_millis(15),
        "events arrived {:?} apart",
        last.duration_since(first)
    );
}

#[test]
fn stream_without_include_usage_carries_no_usage_at_all() {
    let server = mock();
    let mut client = Client::connect(&server);
    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT_STREAM,
        &[("x-mock-chunks", "3")],
    ));
    let (events, done) = response.events();
    assert!(done);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.get("usage").is_none()));
}

#[test]
fn time_to_first_token_and_latency_delay_the_stream() {
    let server = mock();
    let mut client = Client::connect(&server);
    let sent = Instant::now();
    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT_STREAM,
        &[("x-mock-latency-ms", "30"), ("x-mock-ttft-ms", "40")],
    ));
    assert!(response.chunks[0].1.duration_since(sent) >= Duration::from_millis(70));
}

#[test]
fn completions_have_the_text_completion_shape_streamed_or_not() {
    let server = start(MockConfig {
        reply_bytes: 20,
        ..MockConfig::default()
    });
    let mut client = Client::connect(&server);
    let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say hi"}"#;
    let v = client.call(&post("/v1/completions", body, &[])).json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], reply_text(20));
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(body.len()));

    let body =
        r#"{"model":"m","prompt":"Say hi","stream":true,"stream_options":{"include_usage":true}}"#;
    let (events, done) = client.call(&post("/v1/completions", body, &[])).events();
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, reply_text(20));
    assert_eq!(
        events.last().unwrap()["usage"]["completion_tokens"],
        completion_tokens(20)
    );
}

#[test]
fn embeddings_return_one_vector_per_input_with_usage() {
    let server = mock();
    let mut client = Client::connect(&server);
    let body = r#"{"model":"text-embedding-3-small","input":["a","b","c"]}"#;
    let v = client.call(&post("/v1/embeddings", body, &[])).json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    assert_eq!(
        data[1]["embedding"].as_array().unwrap().len(),
        EMBEDDING_DIMS
    );
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(body.len()));
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens(body.len()));

    let one = r#"{"model":"e","input":"just one"}"#;
    let v = client.call(&post("/v1/embeddings", one, &[])).json();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

#[test]
fn unknown_paths_under_v1_get_an_openai_shaped_404() {
    let server = mock();
    let mut client = Client::connect(&server);
    for request in [post("/v1/nope", "{}", &[]), get("/v1/chat/completions")] {
        let response = client.call(&request);
        assert_eq!(response.status, 404);
        let v = response.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "not_found");
        assert!(v["error"]["message"].is_string());
    }
}

#[test]
fn injected_429_is_openai_shaped_with_retry_after_and_keeps_the_connection() {
    let server = start(MockConfig {
        error: Some(ErrorKind::RateLimited),
        retry_after_secs: 7,
        ..MockConfig::default()
    });
    let mut client = Client::connect(&server);
    let response = client.call(&post("/v1/chat/completions", CHAT, &[]));
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("7"));
    let v = response.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());

    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-retry-after", "3")],
    ));
    assert_eq!(response.header("retry-after"), Some("3"));
    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "none")],
    ));
    assert_eq!(response.status, 200, "x-mock-error: none beats --error");
}

#[test]
fn injected_500_and_503_are_openai_server_errors() {
    let server = mock();
    let mut client = Client::connect(&server);
    for (kind, status) in [("500", 500), ("503", 503)] {
        let response = client.call(&post(
            "/v1/chat/completions",
            CHAT_STREAM,
            &[("x-mock-error", kind)],
        ));
        assert_eq!(response.status, status);
        assert_eq!(response.json()["error"]["type"], "server_error");
    }
}

#[test]
fn reset_closes_the_socket_with_rst_and_no_answer() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "reset")],
    ));
    let err = client.read_to_end().expect_err("RST, not a clean close");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn cut_stream_stops_after_about_half_the_chunks_without_the_last_chunk() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT_STREAM_USAGE,
        &[("x-mock-error", "cut"), ("x-mock-chunks", "8")],
    ));
    let raw = String::from_utf8(client.read_to_end().unwrap()).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(raw.matches("data: {").count(), 4);
    assert!(!raw.contains("[DONE]"));
    assert!(!raw.ends_with("0\r\n\r\n"));
}

#[test]
fn cut_non_stream_sends_half_the_content_length_then_closes() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "cut")],
    ));
    let raw = client.read_to_end().unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(raw.len() - head_end, len / 2);
}

#[test]
fn hang_reads_the_request_and_never_answers() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "hang")],
    ));
    // The mock counts a request once the whole request is in, so wait for
    // that (by polling the stats, not by sleeping) before timing the silence.
    let mut control = Client::connect(&server);
    while control.call(&get("/mock/stats")).json()["requests"] != 1 {}
    client
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = client.reader.read(&mut byte).expect_err("no answer");
    assert!(matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ));
}

#[test]
fn malformed_sends_an_unparseable_response_head() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "malformed")],
    ));
    let raw = client.read_to_end().unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    assert!(httparse::Response::new(&mut headers).parse(&raw).is_err());
}

#[test]
fn error_rate_breaks_exactly_every_kth_request() {
    let server = start(MockConfig {
        error: Some(ErrorKind::Unavailable),
        error_rate: 0.25,
        ..MockConfig::default()
    });
    let mut client = Client::connect(&server);
    let statuses: Vec<u16> = (0..8)
        .map(|_| client.call(&post("/v1/chat/completions", CHAT, &[])).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 503, 200, 200, 200, 503]);
}

#[test]
fn keep_alive_pipelined_requests_are_answered_in_order() {
    for shards in [1, 2] {
        let server = start(MockConfig {
            shards,
            ..MockConfig::default()
        });
        let mut client = Client::connect(&server);
        // The first request is the slowest; its answer must still come first.
        let mut burst = post(
            "/v1/chat/completions",
            &CHAT.replace("gpt-4o-mini", "m0"),
            &[("x-mock-latency-ms", "30")],
        );
        for i in 1..5 {
            let model = format!("m{i}");
            let body = if i % 2 == 0 {
                CHAT_STREAM.replace("gpt-4o-mini", &model)
            } else {
                CHAT.replace("gpt-4o-mini", &model)
            };
            burst.extend(post("/v1/chat/completions", &body, &[]));
        }
        client.send(&burst);
        for i in 0..5 {
            let response = client.read().unwrap();
            let model = if response.chunks.is_empty() {
                response.json()["model"].clone()
            } else {
                response.events().0[0]["model"].clone()
            };
            assert_eq!(model, format!("m{i}"));
        }
        assert_eq!(server.connections_seen(), 1);
        assert_eq!(server.requests_seen(), 5);
    }
}

#[test]
fn stats_count_requests_and_connections_and_reset_zeroes_them() {
    let server = start(MockConfig {
        shards: 2,
        ..MockConfig::default()
    });
    for _ in 0..3 {
        let mut client = Client::connect(&server);
        client.call(&post("/v1/chat/completions", CHAT, &[]));
        client.call(&post("/v1/embeddings", r#"{"input":"x"}"#, &[]));
    }
    let mut control = Client::connect(&server);
    let stats = control.call(&get("/mock/stats")).json();
    assert_eq!(stats["requests"], 6, "control requests are not counted");
    assert_eq!(stats["connections"], 4);
    assert_eq!(server.requests_seen(), 6);

    let reset = control.call(&post("/mock/reset", "", &[]));
    assert_eq!(reset.status, 200);
    assert_eq!(server.requests_seen(), 0);
    assert!(server.captured().is_empty());
    let stats = control.call(&get("/mock/stats")).json();
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["connections"], 0);
}

#[test]
fn capture_records_method_path_headers_in_order_and_the_decoded_body() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.call(&post(
        "/v1/chat/completions?x=1",
        CHAT,
        &[("Authorization", "Bearer sk-test"), ("X-Trace", "abc")],
    ));
    let chunked = "POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                   6\r\n{\"inpu\r\n8\r\nt\":\"hi\"}\r\n0\r\n\r\n";
    assert_eq!(client.call(chunked.as_bytes()).status, 200);

    let captured = server.captured();
    assert_eq!(captured.len(), 2);
    let first = &captured[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions?x=1");
    assert_eq!(first.body, CHAT.as_bytes());
    assert_eq!(first.header("authorization"), Some("Bearer sk-test"));
    let names: Vec<&str> = first.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "content-type",
            "content-length",
            "Authorization",
            "X-Trace"
        ]
    );
    assert_eq!(captured[1].body, br#"{"input":"hi"}"#);

    let listed = client.call(&get("/mock/requests")).json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["body"], CHAT);
    assert_eq!(listed[0]["headers"][3][0], "Authorization");
    assert_eq!(listed[0]["headers"][3][1], "Bearer sk-test");
}

#[test]
fn capture_keeps_only_the_newest_requests() {
    let server = mock();
    let mut client = Client::connect(&server);
    for i in 0..CAPTURE_CAPACITY + 2 {
        client.call(&post(&format!("/v1/x{i}"), "", &[]));
    }
    let captured = server.captured();
    assert_eq!(captured.len(), CAPTURE_CAPACITY);
    assert_eq!(captured[0].path, "/v1/x2");
}

#[test]
fn malformed_request_gets_400_and_the_connection_closes() {
    let server = mock();
    let mut client = Client::connect(&server);
    let response =
        client.call(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: nope\r\n\r\n");
    assert_eq!(response.status, 400);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(client.read_to_end().unwrap(), b"");

    let mut client = Client::connect(&server);
    let response = client.call(b"\x16\x03\x01 this is TLS, not HTTP\r\n\r\n");
    assert_eq!(response.status, 400);
}

#[test]
fn oversized_body_gets_413_without_being_read() {
    let server = mock();
    let mut client = Client::connect(&server);
    let response =
        client.call(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 100000000000\r\n\r\n");
    assert_eq!(response.status, 413);
}

#[test]
fn bad_knob_header_or_bad_json_is_a_400_that_names_the_problem() {
    let server = mock();
    let mut client = Client::connect(&server);
    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-chunks", "0")],
    ));
    assert_eq!(response.status, 400);
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("x-mock-chunks"), "{message}");

    let response = client.call(&post("/v1/chat/completions", "{not json", &[]));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn expect_100_continue_is_honoured() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            CHAT.len()
        )
        .as_bytes(),
    );
    assert_eq!(client.read().unwrap().status, 100);
    client.send(CHAT.as_bytes());
    assert_eq!(client.read().unwrap().status, 200);
}

#[test]
fn connection_close_is_honoured_after_the_answer() {
    let server = mock();
    let mut client = Client::connect(&server);
    let response = client.call(&post(
        "/v1/chat/completions",
        CHAT,
        &[("connection", "close")],
    ));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(client.read_to_end().unwrap(), b"");
}

#[test]
fn dropping_the_server_closes_hung_connections_promptly() {
    let server = mock();
    let mut client = Client::connect(&server);
    client.send(&post(
        "/v1/chat/completions",
        CHAT,
        &[("x-mock-error", "hang")],
    ));
    let mut control = Client::connect(&server);
    while control.call(&get("/mock/stats")).json()["requests"] != 1 {}
    let dropped = Instant::now();
    drop(server);
    assert!(dropped.elapsed() < Duration::from_secs(1));
    // EOF or reset, but never the 10 s read timeout.
    let read = client.read_to_end();
    assert!(
        read.as_ref()
            .map(|b| b.is_empty())
            .unwrap_or_else(|e| e.kind() == io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let _ = client.reader.get_ref().shutdown(Shutdown::Both);
}

#[test]
fn many_mocks_run_side_by_side_in_one_process() {
    let servers: Vec<MockServer> = (0..4).map(|_| mock()).collect();
    for (i, server) in servers.iter().enumerate() {
        let mut client = Client::connect(server);
        for _ in 0..=i {
            client.call(&post("/v1/chat/completions", CHAT, &[]));
        }
    }
    let seen: Vec<u64> = servers.iter().map(MockServer::requests_seen).collect();
    assert_eq!(seen, [1, 2, 3, 4]);
    assert!(servers[0].base_url().ends_with("/v1"));
}

#[test]
fn a_stall_freezes_the_server_once_for_the_configured_time() {
    let stall = Duration::from_millis(300);
    let server = start(MockConfig {
        stall: Some(Stall {
            after: Duration::from_millis(100),
            duration: stall,
        }),
        ..MockConfig::default()
    });
    let mut client = Client::connect(&server);
    let begun = Instant::now();
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while begun.elapsed() < Duration::from_millis(700) {
        client.call(&post("/v1/chat/completions", CHAT, &[]));
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
    }
    assert!(
        longest_gap >= stall - Duration::from_millis(50),
        "{longest_gap:?}"
    );
}

#[test]
fn invalid_config_is_refused_at_start() {
    for cfg in [
        MockConfig {
            shards: 0,
            ..MockConfig::default()
        },
        MockConfig {
            chunks: 0,
            ..MockConfig::default()
        },
        MockConfig {
            error_rate: 1.5,
            ..MockConfig::default()
        },
    ] {
        let err = MockServer::start(cfg).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
