//! How `audit log` and `audit report` print: a table for people, CSV for
//! spreadsheets, JSON Lines for tools. Times are RFC 3339, in UTC unless
//! `--tz` names a zone.

use super::query::{Listed, UserSummary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("format {s:?} is not one of table, json, csv")),
        }
    }
}

pub use crate::units::{parse_time, rfc3339};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A time as RFC 3339 in `tz`: "…Z" in UTC, else with the zone's offset;
/// nanoseconds, or whole seconds (for the table).
pub fn stamp(tz: &TimeZone, ns: i64, whole_seconds: bool) -> String {
    if tz.iana_name() == Some("UTC") {
        let mut utc = rfc3339(ns);
        if whole_seconds {
            utc.truncate(19);
            utc.push('Z');
        }
        return utc;
    }
    let ts = Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH);
    let format = if whole_seconds {
        "%Y-%m-%dT%H:%M:%S%:z"
    } else {
        "%Y-%m-%dT%H:%M:%S%.9f%:z"
    };
    ts.to_zoned_datetime(tz.clone()).strftime(format).to_string()
}

const COLUMNS: [&str; 14] = [
    "time", "host", "event", "result", "uid", "user", "pid", "process", "exe", "path", "new_path", "flags", "bytes",
    "detail",
];

fn row(l: &Listed, tz: &TimeZone, whole_seconds: bool) -> [String; 14] {
    let r = &l.record;
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let bytes = match (r.bytes_read, r.bytes_written) {
        (None, None) => String::new(),
        (read, written) => format!("r={} w={}", read.unwrap_or(0), written.unwrap_or(0)),
    };
    [
        stamp(tz, r.time_ns, whole_seconds),
        l.host.clone(),
        r.event.to_string(),
        r.result.clone(),
        r.uid.to_string(),
        opt(&r.user),
        r.pid.to_string(),
        opt(&r.process),
        opt(&r.exe),
        opt(&r.path),
        opt(&r.new_path),
        opt(&r.flags),
        bytes,
        opt(&r.detail),
    ]
}

/// Records as `audit log` prints them, times in `tz`.
pub fn records(listed: &[Listed], format: Format, tz: &TimeZone) -> String {
    match format {
        Format::Json => listed
            .iter()
            .map(|l| {
                let mut value = serde_json::to_value(l).expect("records serialize");
                value["time"] = stamp(tz, l.record.time_ns, false).into();
                format!("{value}\n")
            })
            .collect(),
        Format::Csv => csv(&COLUMNS, listed.iter().map(|l| row(l, tz, false))),
        Format::Table => {
            // The table leaves out the volume-wide columns to stay readable.
            let shown = [0, 2, 3, 5, 4, 6, 7, 9, 10, 11, 12, 13];
            let header: Vec<&str> = shown.iter().map(|&i| COLUMNS[i]).collect();
            // Whole seconds are enough on screen; json and csv keep ns.
            let rows = listed.iter().map(|l| {
                let full = row(l, tz, true);
                shown.iter().map(|&i| full[i].clone()).collect::<Vec<_>>()
            });
            table(&header, rows)
        }
    }
}

/// The per-user summary of `audit report`, times in `tz`.
pub fn report(summaries: &[UserSummary], format: Format, tz: &TimeZone) -> String {
    let header = [
        "uid",
        "user",
        "files_opened",
        "files_written",
        "files_deleted",
        "denied",
        "first_activity",
        "last_activity",
    ];
    let rows = summaries.iter().map(|s| {
        [
            s.uid.to_string(),
            s.user.clone().unwrap_or_default(),
            s.files_opened.to_string(),
            s.files_written.to_string(),
            s.files_deleted.to_string(),
            s.denied.to_string(),
            stamp(tz, s.first_ns, false),
            stamp(tz, s.last_ns, false),
        ]
    });
    match format {
        Format::Json => summaries
            .iter()
            .map(|s| format!("{}\n", serde_json::to_string(s).expect("summaries serialize")))
            .collect(),
        Format::Csv => csv(&header, rows),
        Format::Table => table(&header, rows.map(|r| r.to_vec())),
    }
}

fn csv<const N: usize>(header: &[&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let quote = |field: &str| {
        if field.contains([',', '"', '\n']) {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    };
    let mut out = header.join(",") + "\n";
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| quote(f)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let mut out = line(upper.iter().map(String::as_str).collect());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_absolute_and_relative() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000_000_000));
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000_000_000));
        let day_ago = parse_time("24h").unwrap();
        let now = crate::os::now_ns();
        assert!((now - day_ago - 86_400_000_000_000).abs() < 5_000_000_000);
        assert!(parse_time("yesterday-ish").is_err());
        assert_eq!(rfc3339(1_500_000_000), "1970-01-01T00:00:01.500000000Z");
    }

    #[test]
    fn times_are_shown_in_the_zone_asked_for() {
        let ns = 1_793_577_600_000_000_123; // 2026-11-02T00:00:00Z and 123 ns
        assert_eq!(stamp(&TimeZone::UTC, ns, true), "2026-11-02T00:00:00Z");
        assert_eq!(stamp(&TimeZone::UTC, ns, false), "2026-11-02T00:00:00.000000123Z");
        let new_york = TimeZone::get("America/New_York").unwrap();
        assert_eq!(stamp(&new_york, ns, true), "2026-11-01T19:00:00-05:00");
        assert_eq!(stamp(&new_york, ns, false), "2026-11-01T19:00:00.000000123-05:00");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = csv(&["a", "b"], [["x,y".to_string(), "say \"hi\"".to_string()]].into_iter());
        assert_eq!(out, "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n");
    }
}
