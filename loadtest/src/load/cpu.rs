//! CPU time of processes, from /proc, for "CPU-µs per request".
//!
//! Owns: reading utime + stime of a process (all its threads: the
//! thread-group totals in /proc/PID/stat) and turning tick counts into µs.
//! Does not decide which processes matter (`--cpu-pid`, the harness does).

use std::time::Duration;

/// utime + stime of `pid` (or "self"), all threads, as a duration; `None` when
/// the process is gone or /proc is unreadable.
pub fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start
    // after the last ')'. utime and stime are fields 14 and 15 (1-based), i.e.
    // the 12th and 13th after the name.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ticks_to_duration(utime + stime))
}

/// Sum over `pids`; `None` if any is unreadable.
pub fn processes_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter()
        .map(|pid| process_cpu(&pid.to_string()))
        .sum::<Option<Duration>>()
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_readable_cpu_time() {
        let before = process_cpu("self").expect("readable");
        let mut x = 0u64;
        let spin_until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < spin_until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(process_cpu("self").unwrap() >= before);
        assert!(processes_cpu(&[std::process::id()]).is_some());
    }
}
