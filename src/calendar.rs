//! UTC calendar arithmetic (proleptic Gregorian), without a calendar crate:
//! days since 1970-01-01 to dates and back, and the day and month windows
//! budgets count in. A leaf.

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-30T06:18:38.123Z`.
pub fn format_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The UTC month holding `ms`: its number (months since 1970-01) and its
/// start and end in Unix milliseconds.
pub fn month_of(ms: u64) -> (u32, u64, u64) {
    let (y, m, _) = civil((ms / DAY_MS) as i64);
    let index = ((y - 1970) * 12 + i64::from(m) - 1).max(0) as u32;
    let start = days_from_civil(y, m, 1).max(0) as u64 * DAY_MS;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = days_from_civil(ny, nm, 1).max(0) as u64 * DAY_MS;
    (index, start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_and_end_on_their_first_days() {
        // 2026-11-30T10:00:00Z.
        let ms = 1_796_032_800_000;
        let (index, start, end) = month_of(ms);
        assert_eq!(index, (2026 - 1970) * 12 + 10);
        assert_eq!(civil((start / DAY_MS) as i64), (2026, 11, 1));
        assert_eq!(civil((end / DAY_MS) as i64), (2026, 12, 1));
        let (next, start2, _) = month_of(end);
        assert_eq!((next, start2), (index + 1, end));
        // December rolls into January.
        let dec = days_from_civil(2026, 12, 15) as u64 * DAY_MS;
        assert_eq!(civil((month_of(dec).2 / DAY_MS) as i64), (2027, 1, 1));
    }
}
