//! The official OpenAI Python SDK against the gateway: a non-streaming and a
//! streaming chat completion (the stream must not carry the usage-only event
//! aigw asked for on the client's behalf), embeddings, and a typed error.
//!
//! Runs `tests/sdk/openai_python.py` when `python3 -c "import openai"` works;
//! otherwise prints a skip line, unless `AIGW_REQUIRE_SDK=1` (as in CI), where a
//! missing SDK is a failure. `pip install -r tests/sdk/requirements.txt` installs it.

mod common;

use aigw_loadtest::mock::reply_text;
use common::{Gateway, WAIT, mock};
use std::process::{Command, Stdio};
use std::sync::mpsc;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_python.py");

/// Whether the SDK can be imported; panics if it cannot and CI requires it.
fn sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("AIGW_REQUIRE_SDK").as_deref() != Ok("1"),
            "AIGW_REQUIRE_SDK=1 but `python3 -c \"import openai\"` fails; pip install -r tests/sdk/requirements.txt"
        );
        println!(
            "skipped: the OpenAI Python SDK is not installed (pip install -r tests/sdk/requirements.txt)"
        );
    }
    ok
}

fn openai_python_sdk_works_against_the_gateway(shards: usize) {
    if !sdk_available() {
        return;
    }
    let mock = mock();
    let gw = Gateway::with(shards)
        .provider("up", &mock.base_url(), "")
        .start();

    let child = Command::new("python3")
        .arg(SCRIPT)
        .arg(format!("http://{}", gw.addr))
        .arg(reply_text(64))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // Python's start-up and imports take a while on a busy machine.
    let out = match rx.recv_timeout(WAIT * 3) {
        Ok(out) => out.expect("python3 output"),
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

at_1_and_2_shards!(openai_python_sdk_works_against_the_gateway);
