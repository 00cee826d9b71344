//! `aigw-mock`: runs a mock OpenAI-compatible provider until SIGTERM/SIGINT.
//!
//! Prints exactly one line to stdout once listening,
//! `aigw-mock listening on http://IP:PORT`, so scripts can read the port.
//! Everything else (flags, server) lives in `aigw_loadtest::mock`.

use std::io::Write as _;
use std::process::ExitCode;

use aigw_loadtest::mock::{Command, MockServer, USAGE, parse_args};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("aigw-mock: {e}");
            return ExitCode::from(2);
        }
    };
    // Register before listening so a signal sent right after the banner is
    // never lost to the default (killing) disposition.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("aigw-mock: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match MockServer::start(cfg) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("aigw-mock: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "aigw-mock listening on http://{}", server.addr());
    let _ = stdout.flush();
    drop(stdout);

    let _ = signals.forever().next();
    drop(server);
    ExitCode::SUCCESS
}
