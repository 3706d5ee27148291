//! What counts as unusual: the thresholds of `audit review` and `audit
//! alerts`, read from a small TOML file (`--thresholds FILE`). Every key is
//! optional; the defaults, and why they are what they are, are in README.md
//! ("Reviewing access").

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Thresholds {
    /// The zone working hours are in (default: the report's).
    pub timezone: Option<TimeZone>,
    /// Start and end of the working day, minutes after midnight; accesses
    /// at or after the end, or before the start, are off-hours. A start
    /// after the end is a night shift ("22:00-06:00").
    pub working_hours: (u16, u16),
    pub working_days: Vec<Weekday>,
    /// A day's distinct files must reach this many to be a bulk read.
    pub bulk_min_files: u64,
    /// ...and exceed this multiple of the user's usual day (or, without
    /// history, of the median peer's).
    pub bulk_factor: f64,
    /// Days before the period that make a user's usual day.
    pub baseline_days: u32,
    /// History (days of trail before the period) needed before a path or a
    /// program can be "first seen": on a new volume everything is.
    pub min_history_days: u32,
    /// Refused attempts by one user within `denied_window` that make a burst.
    pub denied_burst: usize,
    pub denied_window: Duration,
    /// Records kept as evidence per finding.
    pub samples: usize,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            timezone: None,
            working_hours: (7 * 60, 19 * 60),
            working_days: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ],
            bulk_min_files: 100,
            bulk_factor: 5.0,
            baseline_days: 30,
            min_history_days: 7,
            denied_burst: 5,
            denied_window: Duration::from_secs(600),
            samples: 20,
        }
    }
}

/// The file's form: every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    timezone: Option<String>,
    working_hours: Option<String>,
    working_days: Option<Vec<String>>,
    bulk_min_files: Option<u64>,
    bulk_factor: Option<f64>,
    baseline_days: Option<u32>,
    min_history_days: Option<u32>,
    denied_burst: Option<usize>,
    denied_window: Option<String>,
    samples: Option<usize>,
}

impl Thresholds {
    pub fn load(path: &Path) -> Result<Thresholds, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("thresholds file {}: {e}", path.display()))?;
        Thresholds::parse(&text).map_err(|e| format!("thresholds file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Thresholds, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut t = Thresholds::default();
        if let Some(zone) = file.timezone {
            t.timezone = Some(time_zone(&zone)?);
        }
        if let Some(hours) = file.working_hours {
            t.working_hours = working_hours(&hours)?;
        }
        if let Some(days) = file.working_days {
            t.working_days = days.iter().map(|d| weekday(d)).collect::<Result<_, _>>()?;
        }
        if let Some(factor) = file.bulk_factor {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(format!("bulk_factor = {factor}: must be a number of at least 1"));
            }
            t.bulk_factor = factor;
        }
        if let Some(window) = file.denied_window {
            t.denied_window = crate::units::parse_duration(&window).map_err(|e| format!("denied_window: {e}"))?;
        }
        if let Some(burst) = file.denied_burst {
            if burst < 2 {
                return Err("denied_burst must be at least 2".into());
            }
            t.denied_burst = burst;
        }
        t.bulk_min_files = file.bulk_min_files.unwrap_or(t.bulk_min_files);
        t.baseline_days = file.baseline_days.unwrap_or(t.baseline_days);
        t.min_history_days = file.min_history_days.unwrap_or(t.min_history_days);
        t.samples = file.samples.unwrap_or(t.samples).max(1);
        Ok(t)
    }

    /// Whether a local time is within working hours.
    pub fn working(&self, day: Weekday, minute_of_day: u16) -> bool {
        let (start, end) = self.working_hours;
        let in_hours = if start < end {
            minute_of_day >= start && minute_of_day < end
        } else {
            minute_of_day >= start || minute_of_day < end
        };
        self.working_days.contains(&day) && in_hours
    }

    pub fn describe_hours(&self) -> String {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let days: Vec<&str> = self.working_days.iter().map(|d| day_name(*d)).collect();
        format!(
            "{}-{} on {}",
            hm(self.working_hours.0),
            hm(self.working_hours.1),
            days.join(",")
        )
    }
}

/// A zone name from the tz database ("Europe/Paris", "UTC"), or "local"
/// (the host's; UTC when the host has none configured).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name == "local" {
        return Ok(TimeZone::system());
    }
    TimeZone::get(name).map_err(|_| format!("{name:?} is not a time zone of the tz database (e.g. Europe/Paris, UTC)"))
}

fn working_hours(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("working_hours = {s:?}: expected HH:MM-HH:MM, e.g. 07:00-19:00");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!("working_hours = {s:?}: the start and the end are the same"));
    }
    Ok((start, end))
}

fn weekday(s: &str) -> Result<Weekday, String> {
    let lower = s.trim().to_ascii_lowercase();
    ALL_DAYS
        .into_iter()
        .find(|d| lower == day_name(*d).to_ascii_lowercase() || lower == full_day_name(*d))
        .ok_or_else(|| format!("working_days: {s:?} is not a day (mon, tue, ..., sun)"))
}

const ALL_DAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

pub fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "Mon",
        Weekday::Tuesday => "Tue",
        Weekday::Wednesday => "Wed",
        Weekday::Thursday => "Thu",
        Weekday::Friday => "Fri",
        Weekday::Saturday => "Sat",
        Weekday::Sunday => "Sun",
    }
}

fn full_day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let t = Thresholds::parse("").unwrap();
        assert_eq!(t.working_hours, (420, 1140));
        assert_eq!(t.working_days.len(), 5);
        assert_eq!(t.bulk_min_files, 100);
        assert_eq!(t.describe_hours(), "07:00-19:00 on Mon,Tue,Wed,Thu,Fri");
    }

    #[test]
    fn every_key_is_read() {
        let t = Thresholds::parse(
            "timezone = \"UTC\"\nworking_hours = \"08:30-17:00\"\nworking_days = [\"monday\", \"sat\"]\n\
             bulk_min_files = 20\nbulk_factor = 3.5\nbaseline_days = 10\nmin_history_days = 0\n\
             denied_burst = 3\ndenied_window = \"2m\"\nsamples = 5\n",
        )
        .unwrap();
        assert_eq!(t.working_hours, (510, 1020));
        assert_eq!(t.working_days, vec![Weekday::Monday, Weekday::Saturday]);
        assert_eq!((t.bulk_min_files, t.bulk_factor), (20, 3.5));
        assert_eq!((t.baseline_days, t.min_history_days), (10, 0));
        assert_eq!((t.denied_burst, t.denied_window), (3, Duration::from_secs(120)));
        assert_eq!(t.samples, 5);
        assert!(t.working(Weekday::Saturday, 510));
        assert!(!t.working(Weekday::Saturday, 1020));
        assert!(!t.working(Weekday::Sunday, 600));
    }

    #[test]
    fn a_night_shift_spans_midnight() {
        let t = Thresholds::parse("working_hours = \"22:00-06:00\"").unwrap();
        assert!(t.working(Weekday::Monday, 23 * 60));
        assert!(t.working(Weekday::Monday, 5 * 60 + 59));
        assert!(!t.working(Weekday::Monday, 6 * 60));
        assert!(!t.working(Weekday::Monday, 12 * 60));
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (text, says) in [
            ("working_hours = \"19:00-19:00\"", "working_hours"),
            ("working_hours = \"7-19\"", "working_hours"),
            ("working_days = [\"funday\"]", "working_days"),
            ("timezone = \"Mars/Olympus\"", "Mars/Olympus"),
            ("bulk_factor = 0.5", "bulk_factor"),
            ("denied_window = \"soon\"", "denied_window"),
            ("denied_burst = 1", "denied_burst"),
            ("bulk_treshold = 3", "bulk_treshold"),
        ] {
            let err = Thresholds::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
