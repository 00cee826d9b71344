//! The official OpenAI SDKs (Python and Node) against the gateway: a
//! non-streaming and a streaming chat completion (the stream must not carry the
//! usage-only event aigw asked for on the client's behalf), a stream that asks
//! for usage and gets it, embeddings, typed errors, a gateway key as the SDK's
//! `api_key` (a wrong one: the typed 401) and a rate limit's typed 429.
//!
//! Runs `tests/sdk/openai_python.py` when `python3 -c "import openai"` works, and
//! `node tests/sdk/node/openai_node.mjs` when `tests/sdk/node/node_modules/openai`
//! exists; otherwise prints a skip line, unless `AIGW_REQUIRE_SDK=1` (as in CI),
//! where a missing SDK is a failure. `pip install -r tests/sdk/requirements.txt`
//! and `npm ci --prefix tests/sdk/node` install them.

mod common;

use aigw_loadtest::mock::reply_text;
use common::{Gateway, WAIT, mock};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

const PYTHON_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_python.py");
const TRANSLATE_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/translate_python.py");
const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/node");
const NODE_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/sdk/node/openai_node.mjs"
);

/// Returns `ok`; when the SDK is missing, panics if CI requires it (naming
/// `how`, the command that installs it) and prints a skip line otherwise.
fn require_sdk(ok: bool, sdk: &str, missing: &str, how: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("AIGW_REQUIRE_SDK").as_deref() != Ok("1"),
            "AIGW_REQUIRE_SDK=1 but {missing}; {how}"
        );
        println!("skipped: the OpenAI {sdk} SDK is not installed ({how})");
    }
    ok
}

/// Whether the Python SDK can be imported.
fn python_sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require_sdk(
        ok,
        "Python",
        "`python3 -c \"import openai\"` fails",
        "pip install -r tests/sdk/requirements.txt",
    )
}

/// Whether both Python SDKs (openai and anthropic) can be imported.
fn python_sdks_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require_sdk(
        ok,
        "Python (openai and anthropic)",
        "`python3 -c \"import openai, anthropic\"` fails",
        "pip install -r tests/sdk/requirements.txt",
    )
}

/// Whether the Node SDK is installed next to the script and `node` runs.
fn node_sdk_available() -> bool {
    let installed = Path::new(NODE_DIR).join("node_modules/openai").is_dir();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = if installed {
        "`node --version` fails"
    } else {
        "tests/sdk/node/node_modules/openai does not exist"
    };
    require_sdk(
        installed && node,
        "Node",
        missing,
        "npm ci --prefix tests/sdk/node",
    )
}

/// Runs `script GATEWAY_URL EXPECTED_REPLY` with python3 against `gw`; it
/// must exit 0 and print a last line ending in `ok`.
fn run_script(gw: &Gateway, program: &str, args: &[&str]) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // The interpreter's start-up and imports take a while on a busy machine.
    let out = match rx.recv_timeout(WAIT * 3) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{program} output: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid; the waiting thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the SDK script did not finish within {:?}", WAIT * 3);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed ({}):\n{stdout}\n{stderr}\ngateway stderr:\n{}",
        out.status,
        gw.stderr()
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    println!("{}", stdout.trim_end());
}

/// Starts a gateway whose provider `up` is the mock provider and runs
/// `program script GATEWAY_URL EXPECTED_REPLY`, which must exit 0 and print a
/// last line ending in `ok`.
fn run_sdk_script(shards: usize, program: &str, script: &str) {
    let mock = mock();
    let secret = format!("sk-aigw-{}", "7".repeat(64));
    let hash = aigw::auth::hex(&aigw::auth::hash_secret(secret.as_bytes()));
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "api_key = \"sk-up\"")
        .toml("[cache]\nenabled = true\nsize = \"16MiB\"\nmax_entry = \"1MiB\"\n")
        .toml(&format!("[keys.sdk]\nsecret_sha256 = \"{hash}\"\n"))
        .toml("[[rate_limits]]\nscope = \"metadata.user\"\ncount = \"requests\"\nlimit = 1\nwindow = \"30d\"\nmodels = [\"up/limited\"]\n")
        .start();

    let url = format!("http://{}", gw.addr);
    run_script(&gw, program, &[script, &url, &reply_text(64), &secret]);
}

fn openai_python_sdk_works_against_the_gateway(shards: usize) {
    if python_sdk_available() {
        run_sdk_script(shards, "python3", PYTHON_SCRIPT);
    }
}

fn openai_node_sdk_works_against_the_gateway(shards: usize) {
    if node_sdk_available() {
        run_sdk_script(shards, "node", NODE_SCRIPT);
    }
}

/// The openai SDK against an Anthropic and a Gemini model, and the anthropic SDK through
/// passthrough and through `/v1/messages` to an OpenAI-compatible model:
/// streaming, tools and typed errors.
fn both_python_sdks_work_across_formats(shards: usize) {
    if !python_sdks_available() {
        return;
    }
    let (openai, claude, gemini) = (mock(), mock(), mock());
    let root = claude.base_url().trim_end_matches("/v1").to_string();
    let groot = gemini.base_url().trim_end_matches("/v1").to_string();
    let gw = Gateway::with(shards)
        .provider("up", &openai.base_url(), "api_key = \"sk-up\"")
        .toml(&format!(
            "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{root}\"\napi_key = \"sk-ant\"\n\
             [providers.gem]\nkind = \"google\"\nbase_url = \"{groot}\"\napi_key = \"g-key\"\n"
        ))
        .start();
    let url = format!("http://{}", gw.addr);
    run_script(&gw, "python3", &[TRANSLATE_SCRIPT, &url, &reply_text(64)]);
}

at_1_and_2_shards!(
    both_python_sdks_work_across_formats,
    openai_python_sdk_works_against_the_gateway,
    openai_node_sdk_works_against_the_gateway,
);
