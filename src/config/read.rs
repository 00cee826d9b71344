//! Reading raw TOML values into typed ones: the [`Walker`] every section reader
//! uses, the unit parsers behind it ([`parse_duration`], [`parse_bytes`]), the
//! [`Secret`] wrapper, and the errors ([`ConfigError`]) it collects at key paths.
//!
//! Knows value shapes (a duration, a size, an integer in a range), not what any
//! key means: the sections pass the path, default and bounds. A bad value is
//! recorded and its fallback returned, so one pass finds every problem.

use std::fmt;
use std::time::Duration;

/// A secret that cannot be printed by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The only way to read the value; call it only where the secret is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// One problem in the file: where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl ConfigError {
    pub(super) fn with_span(
        mut self,
        text: &str,
        span: Option<std::ops::Range<usize>>,
    ) -> ConfigError {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            self.message = format!("line {line}: {}", self.message);
        }
        self
    }
}

/// All problems found in one pass, so a user fixes them in one edit.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Walks the raw TOML tree, collecting typed values and errors with key paths.
#[derive(Default)]
pub(super) struct Walker {
    errors: Vec<ConfigError>,
}

impl Walker {
    pub(super) fn err(&mut self, path: &str, message: String) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            message,
        });
    }

    /// How many problems were recorded so far.
    pub(super) fn count(&self) -> usize {
        self.errors.len()
    }

    /// Every problem recorded so far, or nothing: the values read are then valid.
    pub(super) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn table<'a>(
        &mut self,
        root: &'a toml::Table,
        key: &str,
    ) -> Option<&'a toml::Table> {
        match root.get(key) {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None, // non-tables were reported by the key check
        }
    }

    fn leaf<'a>(&self, t: Option<&'a toml::Table>, path: &str) -> Option<&'a toml::Value> {
        t?.get(path.rsplit('.').next().expect("non-empty"))
    }

    pub(super) fn string(&mut self, t: Option<&toml::Table>, path: &str) -> Option<String> {
        match self.leaf(t, path)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.err(
                    path,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An array of strings.
    pub(super) fn strings(&mut self, t: Option<&toml::Table>, path: &str) -> Option<Vec<String>> {
        match self.leaf(t, path)? {
            toml::Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match v {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => {
                            self.err(
                                &format!("{path}[{i}]"),
                                format!("expected a string, found {}", other.type_str()),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.err(
                    path,
                    format!(
                        "expected an array of strings like [\"a\", \"b\"], found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// `true`/`false` under a section table (or, for a top-level key, the root).
    pub(super) fn flag(&mut self, t: Option<&toml::Table>, path: &str) -> Option<bool> {
        match self.leaf(t, path)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.err(
                    path,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A number from 0 to 1 (an integer 0 or 1 is accepted too).
    pub(super) fn fraction(&mut self, t: Option<&toml::Table>, path: &str) -> Option<f64> {
        let v = match self.leaf(t, path)? {
            toml::Value::Float(f) => *f,
            toml::Value::Integer(i) => *i as f64,
            other => {
                self.err(
                    path,
                    format!("expected a number from 0 to 1, found {}", other.type_str()),
                );
                return None;
            }
        };
        if (0.0..=1.0).contains(&v) {
            Some(v)
        } else {
            self.err(path, format!("{v} is out of range; use 0.0..=1.0"));
            None
        }
    }

    pub(super) fn uint(
        &mut self,
        t: Option<&toml::Table>,
        path: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match self.leaf(t, path)? {
            toml::Value::Integer(i)
                if (*i as i128) >= min as i128 && (*i as i128) <= max as i128 =>
            {
                Some(*i as u64)
            }
            toml::Value::Integer(i) => {
                self.err(path, format!("{i} is out of range; use {min}..={max}"));
                None
            }
            other => {
                self.err(
                    path,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A positive duration of at most [`MAX_DURATION`].
    pub(super) fn duration(
        &mut self,
        t: Option<&toml::Table>,
        path: &str,
        default: &str,
    ) -> Duration {
        let fallback = parse_duration(default).expect("valid default");
        let Some(v) = self.leaf(t, path) else {
            return fallback;
        };
        let parsed = match v {
            toml::Value::String(s) => parse_duration(s),
            toml::Value::Integer(_) => Err("a bare number has no unit".to_string()),
            other => Err(format!("expected a string, found {}", other.type_str())),
        };
        match parsed {
            Ok(d) if d > MAX_DURATION => {
                self.err(
                    path,
                    format!("{d:?} is longer than the 365 days any setting may wait"),
                );
                fallback
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(path, "must be greater than zero".into());
                fallback
            }
            Err(e) => {
                self.err(
                    path,
                    format!("{e}; write a duration like \"500ms\", \"10s\" or \"2m\""),
                );
                fallback
            }
        }
    }

    /// A duration that may be zero ("0us" or "0ms").
    pub(super) fn duration_or_zero(&mut self, t: Option<&toml::Table>, path: &str) -> Duration {
        let Some(v) = self.leaf(t, path) else {
            return Duration::ZERO;
        };
        match v {
            toml::Value::String(s) => match parse_duration(s) {
                Ok(d) if d <= MAX_DURATION => d,
                Ok(d) => {
                    self.err(
                        path,
                        format!("{d:?} is longer than the 365 days any setting may wait"),
                    );
                    Duration::ZERO
                }
                Err(e) => {
                    self.err(
                        path,
                        format!("{e}; write a duration like \"50us\" or \"0us\""),
                    );
                    Duration::ZERO
                }
            },
            other => {
                self.err(
                    path,
                    format!("expected a duration string, found {}", other.type_str()),
                );
                Duration::ZERO
            }
        }
    }

    pub(super) fn bytes(
        &mut self,
        t: Option<&toml::Table>,
        path: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = self.leaf(t, path) else {
            return default;
        };
        let parsed = match v {
            toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            toml::Value::String(s) => parse_bytes(s),
            other => Err(format!("expected a size, found {}", other.type_str())),
        };
        match parsed {
            Ok(n) if n >= min && n <= max => n,
            Ok(n) => {
                self.err(
                    path,
                    format!("{n} bytes is out of range; use {min}..={max} bytes"),
                );
                default
            }
            Err(e) => {
                self.err(
                    path,
                    format!("{e}; write a size like 16384, \"64KiB\" or \"32MiB\""),
                );
                default
            }
        }
    }
}

/// Longest duration a setting may hold: deadlines are added to the clock, and
/// a year is already longer than anything a gateway waits for.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// "500ms", "10s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let d = match unit.trim() {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        "" => return Err(format!("`{s}` has no unit (us, ms, s, m, h, d)")),
        u => return Err(unit_error(s, u, "90m", "us, ms, s, m, h, d")),
    };
    Ok(d)
}

/// Why `unit` (what follows the whole number in `s`) is not one of `units`.
fn unit_error(s: &str, unit: &str, example: &str, units: &str) -> String {
    if unit.starts_with('.') {
        format!("`{s}`: whole numbers only; use a smaller unit (e.g. `{example}`)")
    } else if unit.contains(|c: char| c.is_ascii_digit()) {
        format!("`{s}`: one number and one unit (e.g. `{example}`)")
    } else {
        format!("`{s}` has an unknown unit ({units})")
    }
}

/// "16384", "64KiB", "32MiB", "1GiB" (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(unit_error(s, u, "1536MiB", "B, KiB, MiB, GiB, KB, MB, GB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::errors;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        let why = |r: Result<u64, String>| r.unwrap_err();
        assert!(why(parse_bytes("1.5GiB")).contains("whole numbers only"));
        assert!(why(parse_bytes("1PiB")).contains("unknown unit"));
        let why = |r: Result<Duration, String>| r.unwrap_err();
        assert!(why(parse_duration("1h30m")).contains("one number and one unit"));
        assert!(why(parse_duration("1.5h")).contains("whole numbers only"));
        assert!(why(parse_duration("5x")).contains("unknown unit"));
        assert!(why(parse_duration("5")).contains("no unit"));
        let e = errors("[limits]\nmax_body_bytes = \"12 parsecs\"\n");
        assert!(e[0].starts_with("limits.max_body_bytes:"), "{e:?}");
    }
}
