//! The `aigw` process under test: a temporary directory holding its config,
//! data dir and admin socket; the child process; its stdout and stderr.
//!
//! Startup waits for `aigw listening on http://IP:PORT (N shards)` and the
//! admin-socket line (bounded by [`WAIT`]); drop kills the child and removes the
//! directory, so a failing test leaves nothing behind.

use super::wire::Client;
use super::{WAIT, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

/// The gateway binary Cargo built for these tests.
pub const AIGW: &str = env!("CARGO_BIN_EXE_aigw");

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("aigw-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What goes into the test config besides `[server]` and `[admin]`.
#[derive(Debug)]
pub struct Setup {
    shards: usize,
    server_lines: String,
    sections: String,
    env: Vec<(String, String)>,
    admin_lines: String,
    data_dir: Option<PathBuf>,
}

impl Setup {
    /// Adds `[providers.NAME]` of kind openai at `base_url`, plus `extra` lines.
    pub fn provider(mut self, name: &str, base_url: &str, extra: &str) -> Setup {
        self.sections.push_str(&format!(
            "\n[providers.{name}]\nkind = \"openai\"\nbase_url = \"{base_url}\"\n{extra}\n"
        ));
        self
    }

    /// Adds lines to the `[server]` table (e.g. `drain_timeout = "1s"`).
    pub fn server(mut self, lines: &str) -> Setup {
        self.server_lines.push_str(lines);
        self.server_lines.push('\n');
        self
    }

    /// Adds lines to the `[admin]` table (e.g. `listen = "0"`).
    pub fn admin(mut self, lines: &str) -> Setup {
        self.admin_lines.push_str(lines);
        self.admin_lines.push('\n');
        self
    }

    /// Sets an environment variable for the gateway process (e.g. a key that
    /// `api_key_env` names, so it appears in no file).
    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Uses this `server.data_dir` (another gateway's, to test a restart).
    pub fn data_dir(mut self, dir: &Path) -> Setup {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Adds whole TOML sections (e.g. `[timeouts]` with keys).
    pub fn toml(mut self, text: &str) -> Setup {
        self.sections.push('\n');
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    pub fn start(self) -> Gateway {
        let dir = TempDir::new("gw");
        // The data directory sits beside the config file, not around it.
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = {}\ndata_dir = \"{data}\"\n{}\n[admin]\nsocket = \"{data}/admin.sock\"\n{}\n{}",
            self.shards,
            self.server_lines,
            self.admin_lines,
            self.sections,
            data = self
                .data_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("data"))
                .display(),
        );
        let config = dir.write("aigw.toml", &text);
        let metrics = self.admin_lines.contains("listen");
        Gateway::spawn(dir, &config, self.shards, &self.env, metrics)
    }
}

/// A running `aigw serve`.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin_socket: PathBuf,
    /// `admin.listen`'s address, when the test set one.
    pub metrics_addr: Option<SocketAddr>,
    pub shards: usize,
    stderr: Arc<Output>,
    dir: TempDir,
}

/// A child's collected output, with a signal for each new piece.
#[derive(Default)]
pub struct Output {
    text: Mutex<String>,
    grew: std::sync::Condvar,
}

impl Gateway {
    /// Starts building a gateway with `shards` shards.
    pub fn with(shards: usize) -> Setup {
        Setup {
            shards,
            server_lines: String::new(),
            sections: String::new(),
            env: Vec::new(),
            admin_lines: String::new(),
            data_dir: None,
        }
    }

    fn spawn(
        dir: TempDir,
        config: &Path,
        shards: usize,
        env: &[(String, String)],
        metrics: bool,
    ) -> Gateway {
        let mut child = Command::new(AIGW)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aigw");
        let stderr = Arc::new(Output::default());
        collect(child.stderr.take().expect("stderr piped"), stderr.clone());
        let lines = lines_of(child.stdout.take().expect("stdout piped"));
        let fail = |child: &mut Child, why: String| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "aigw did not start: {why}\nstderr:\n{}",
                stderr.text.lock().unwrap()
            );
        };
        let listening = match lines.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(e) => fail(&mut child, format!("no listening line ({e})")),
        };
        let Some(addr) = parse_listening(&listening, shards) else {
            fail(&mut child, format!("unexpected first line {listening:?}"))
        };
        let admin_socket = match lines.recv_timeout(WAIT) {
            Ok(l) => match l.strip_prefix("aigw admin socket ") {
                Some(p) => PathBuf::from(p),
                None => fail(&mut child, format!("unexpected second line {l:?}")),
            },
            Err(e) => fail(&mut child, format!("no admin socket line ({e})")),
        };
        let metrics_addr = if metrics {
            match lines.recv_timeout(WAIT) {
                Ok(l) => l
                    .strip_prefix("aigw metrics on http://")
                    .and_then(|r| r.strip_suffix("/metrics"))
                    .and_then(|a| a.parse().ok()),
                Err(e) => fail(&mut child, format!("no metrics line ({e})")),
            }
        } else {
            None
        };
        Gateway {
            child: Some(child),
            addr,
            admin_socket,
            metrics_addr,
            shards,
            stderr,
            dir,
        }
    }

    /// The gateway's temporary directory (its config file and `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `server.data_dir`: the request log, the admin socket.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Sends SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("gateway running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A new keep-alive client connection.
    /// Opens connections until there is an idle keep-alive one on every shard
    /// (the shard is the last two hex digits of the third group of
    /// `aigw-request-id`, a UUIDv7).
    pub fn connection_per_shard(&self) -> Vec<Client> {
        let mut by_shard: Vec<Option<Client>> = (0..self.shards).map(|_| None).collect();
        for _ in 0..256 {
            if by_shard.iter().all(Option::is_some) {
                break;
            }
            let mut c = self.client();
            let r = c.get("/no-such-route");
            assert_eq!(r.status, 404);
            let id = r.header("aigw-request-id").expect("request id");
            let shard = id
                .split('-')
                .nth(2)
                .and_then(|g| usize::from_str_radix(&g[2..], 16).ok())
                .expect("shard in request id");
            by_shard[shard].get_or_insert(c);
        }
        by_shard
            .into_iter()
            .map(|c| c.expect("a connection landed on every shard"))
            .collect()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// `GET /stats` on the admin socket, as JSON.
    pub fn stats(&self) -> simd_json::OwnedValue {
        let (status, body) = admin_get(&self.admin_socket, "/stats");
        assert_eq!(
            status,
            200,
            "admin /stats: {}",
            String::from_utf8_lossy(&body)
        );
        json(&body)
    }

    /// `GET /logs?{query}`: the rows, newest first.
    pub fn log_rows(&self, query: &str) -> Vec<simd_json::OwnedValue> {
        let (status, body) = admin_get(&self.admin_socket, &format!("/logs?{query}"));
        assert_eq!(
            status,
            200,
            "admin /logs: {}",
            String::from_utf8_lossy(&body)
        );
        String::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| json(l.as_bytes()))
            .collect()
    }

    /// [`Gateway::log_rows`] once there are at least `n` (the log commits
    /// every `logs.flush_interval`), or what there is after [`WAIT`].
    pub fn log_rows_at_least(&self, n: usize, query: &str) -> Vec<simd_json::OwnedValue> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let rows = self.log_rows(query);
            if rows.len() >= n || std::time::Instant::now() > deadline {
                return rows;
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("gateway running").id() as i32
    }

    /// Sends SIGTERM (a drain).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits (bounded by `WAIT`) for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("gateway running");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => status.expect("wait for aigw"),
            Err(_) => {
                // SAFETY: as above; the waiting thread reaps it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!(
                    "aigw did not exit within {WAIT:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text.lock().unwrap().clone()
    }

    /// Waits (bounded by `WAIT`) until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let text = self.stderr.text.lock().unwrap();
        let (text, timeout) = self
            .stderr
            .grew
            .wait_timeout_while(text, WAIT, |t| !t.contains(needle))
            .unwrap();
        assert!(!timeout.timed_out(), "no {needle:?} on stderr:\n{}", *text);
        text.clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `aigw listening on http://IP:PORT (N shards)` -> the address, if N matches.
fn parse_listening(line: &str, shards: usize) -> Option<SocketAddr> {
    let rest = line.strip_prefix("aigw listening on http://")?;
    let (addr, tail) = rest.split_once(' ')?;
    (tail == format!("({shards} shards)")).then_some(())?;
    addr.parse().ok()
}

/// Lines of a child's output, delivered through a channel as they arrive.
pub fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn collect(mut out: impl Read + Send + 'static, into: Arc<Output>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.text
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            into.grew.notify_all();
        }
    });
}

/// One GET over the admin Unix socket: (status, body).
/// Every file under `dir` (at any depth) that could be read, with its bytes.
pub fn files_under(dir: PathBuf) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

pub fn admin_get(socket: &Path, path: &str) -> (u16, Vec<u8>) {
    admin_request(socket, "GET", path)
}

/// The newest row of the request log, as `GET /logs` shows it.
pub fn newest_log_row(socket: &Path) -> simd_json::OwnedValue {
    let (status, rows) = admin_get(socket, "/logs?limit=1");
    assert_eq!(status, 200, "GET /logs");
    let rows = String::from_utf8(rows).unwrap();
    json(rows.lines().next().expect("a logged request").as_bytes())
}

/// One POST (no body) over the admin Unix socket: (status, body).
pub fn admin_post(socket: &Path, path: &str) -> (u16, Vec<u8>) {
    admin_request(socket, "POST", path)
}

fn admin_request(socket: &Path, method: &str, path: &str) -> (u16, Vec<u8>) {
    admin_send(socket, method, path, "")
}

/// One request with a body over the admin Unix socket: (status, body).
pub fn admin_send(socket: &Path, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: aigw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read admin response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("admin response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("admin status");
    (status, raw[split + 4..].to_vec())
}

/// Runs `aigw ARGS` to completion (bounded by `WAIT`): (exit code, stdout, stderr).
pub fn run_aigw(args: &[&str]) -> (i32, String, String) {
    let child = Command::new(AIGW)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aigw");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("aigw output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid; the waiting thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("aigw {args:?} did not exit within {WAIT:?}");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
