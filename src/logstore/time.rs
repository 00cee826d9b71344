//! Wall-clock times as the log shows and takes them: Unix milliseconds to
//! `2026-11-30T06:18:38.123Z` and back, and `--since 1h`-style relative times.
//! UTC only; no calendar crate needed for that.

use crate::calendar::days_from_civil;
pub use crate::calendar::format_ms;

/// [`parse_time`] for the start of a total (`aigw usage --since`, `GET
/// /usage?since=`): a start after `now_ms` would total nothing, said as a
/// mistake rather than shown as an empty table.
pub fn parse_start(s: &str, now_ms: u64) -> Result<u64, String> {
    let at = parse_time(s, now_ms)?;
    if at > now_ms {
        return Err(format!(
            "`{}` is in the future (it is {} now): give a time before now",
            s.trim(),
            format_ms(now_ms)
        ));
    }
    Ok(at)
}

/// A time as `aigw logs --since/--until` take it: a duration ago (`90s`,
/// `15m`, `1h`, `7d`), an RFC 3339 time (`2026-11-30T06:00:00Z`, seconds
/// and fraction optional; a `+01:00` offset in place of `Z`), a date alone
/// (`2026-11-30`: its UTC midnight), or Unix seconds.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a time: write a duration ago (\"15m\", \"1h\", \"7d\"), 2026-11-30T06:00:00Z (or +01:00 for Z), 2026-11-30 or Unix seconds"
        )
    };
    if let Some(unit) = s.find(|c: char| !c.is_ascii_digit())
        && unit > 0
        && !s.contains('-')
    {
        let n: u64 = s[..unit].parse().map_err(|_| bad())?;
        let per = match &s[unit..] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(per)));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return s
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1000))
            .ok_or_else(bad);
    }
    let timed = s.contains(['T', 't', ' ']);
    let (rest, offset_s) = if let Some(r) = s.strip_suffix(['Z', 'z']) {
        (r, 0)
    } else if let Some(found) = timed.then(|| utc_offset(s)).flatten() {
        found
    } else if !timed {
        (s, 0)
    } else {
        return Err(bad());
    };
    let (date, clock) = rest
        .split_once(['T', 't', ' '])
        .unwrap_or((rest, "00:00:00"));
    let num = |p: Option<&str>| p.and_then(|v| v.parse::<u32>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let (clock, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = clock.split(':');
    let (h, mi) = (num(c.next())?, num(c.next())?);
    let sec = c
        .next()
        .map(|v| v.parse::<u32>().map_err(|_| bad()))
        .transpose()?
        .unwrap_or(0);
    if d.next().is_some()
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Milliseconds: the first three digits of the fraction, padded.
    let millis = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let days = days_from_civil(i64::from(y), mo, day);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_s;
    u64::try_from(secs)
        .map(|s| s * 1000 + millis)
        .map_err(|_| bad())
}

/// A time's `+HH:MM` (or `-HH:MM`) ending: the text before it and the
/// offset in seconds east of UTC.
fn utc_offset(s: &str) -> Option<(&str, i64)> {
    let at = s.len().checked_sub(6)?;
    let (rest, off) = (s.get(..at)?, s.get(at..)?.as_bytes());
    let sign = match off[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| i64::from(b - b'0'));
    let (h, m) = (
        digit(off[1])? * 10 + digit(off[2])?,
        digit(off[4])? * 10 + digit(off[5])?,
    );
    (off[3] == b':' && h < 24 && m < 60).then_some((rest, sign * (h * 3600 + m * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_parse_back() {
        let ms = 1_795_940_318_123; // 2026-11-29T...
        let text = format_ms(ms);
        assert_eq!(parse_time(&text, 0).unwrap(), ms);
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time("2026-11-30T06:00:00Z", 0).unwrap(),
            parse_time("2026-11-30T06:00Z", 0).unwrap()
        );
        assert_eq!(
            format_ms(parse_time("2024-02-29T23:59:59Z", 0).unwrap()),
            "2024-02-29T23:59:59.000Z"
        );
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(
            parse_time("1h", 10_000_000).unwrap(),
            10_000_000 - 3_600_000
        );
        assert_eq!(parse_time("90s", 100_000).unwrap(), 10_000);
        // An offset in place of Z, and a date alone (its UTC midnight).
        let z = parse_time("2026-12-02T11:38:00Z", 0).unwrap();
        assert_eq!(parse_time("2026-12-02T12:38:00+01:00", 0), Ok(z));
        assert_eq!(parse_time("2026-12-02T06:08:00-05:30", 0), Ok(z));
        assert_eq!(
            parse_time("2026-12-02", 0),
            parse_time("2026-12-02T00:00:00Z", 0)
        );
        for bad in [
            "2026-12-02T11:38:00",
            "2026-12-02T11:38:00+1:00",
            "2026-12-02T11:38+25:00",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
        // A total cannot start after now; the moment itself is fine.
        assert!(
            parse_start("99999999999999", 5_000)
                .unwrap_err()
                .contains("in the future")
        );
        assert!(parse_start("2999-01-01T00:00:00Z", 5_000).is_err());
        assert_eq!(parse_start("5", 5_000), Ok(5_000));
        assert_eq!(parse_start("1s", 5_000), Ok(4_000));
        assert_eq!(parse_time("1700000000", 0).unwrap(), 1_700_000_000_000);
        for bad in [
            "yesterday",
            "1y",
            "2026-13-01T00:00:00Z",
            "-5m",
            "2026-01-01T00:00:00.\u{e9}\u{e9}Z",
            "99999999999999999999",
            "99999999999999999",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }
}
