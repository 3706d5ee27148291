//! Sizes, durations and times as people write them, and as we print them:
//! one parser and one printer each, used by every option and every table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A byte count: `65536`, `512K`, `64M`, `10G`, `1.5T`. Units are powers of
/// 1024 whether written K, KB or KiB (the sizes of caches and blocks are).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("{s:?} is not a size like 512M, 10G or 1048576 ({e})"))
}

/// 1536 as "1.5 KiB".
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration: `90s`, `15min`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 90s, 15min or 24h ({e})"))
}

/// Nanoseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}

/// A point in time from RFC 3339 ("2026-11-01T00:00:00Z", or a date: its
/// first instant) or relative to now ("24h", "30d", "90min"), as ns since
/// the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    Ok(parse_point(s)?.0)
}

/// `parse_time` for the end of a range, inclusive: a date alone means the
/// last instant of that day ("--until 2026-12-02" includes the 2nd).
pub fn parse_time_until(s: &str) -> Result<i64, String> {
    let (at, whole_day) = parse_point(s)?;
    Ok(if whole_day { at + 86_400_000_000_000 - 1 } else { at })
}

/// The instant `s` names, and whether it named a whole day.
fn parse_point(s: &str) -> Result<(i64, bool), String> {
    let (at, whole_day) = if let Ok(age) = humantime::parse_duration(s) {
        (SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH), false)
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        (t, false)
    } else if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        (t, true)
    } else {
        return Err(format!(
            "{s:?} is neither a time like 2026-11-01T08:00:00Z nor an age like 24h or 30d"
        ));
    };
    Ok((
        at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
        whole_day,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1tb"), Ok(1 << 40));
        assert_eq!(parse_size(" 1.5K "), Ok(1536));
        for bad in ["ten", "5X", "99999999999T", "", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_print_with_one_decimal() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(140_513_606), "134.0 MiB");
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_time("2026-11-01T00:00:00Z"), Ok(1_793_491_200_000_000_000));
        assert_eq!(parse_time("2026-11-01"), Ok(1_793_491_200_000_000_000));
        assert_eq!(rfc3339(1_793_491_200_000_000_000), "2026-11-01T00:00:00.000000000Z");
        // An end date includes its whole day; an exact end time is exact.
        assert_eq!(parse_time_until("2026-11-01"), Ok(1_793_577_599_999_999_999));
        assert_eq!(parse_time_until("2026-11-01T00:00:00Z"), Ok(1_793_491_200_000_000_000));
        let an_hour_ago = parse_time("1h").unwrap();
        assert!((crate::os::now_ns() - an_hour_ago - 3_600_000_000_000).abs() < 60_000_000_000);
    }
}
