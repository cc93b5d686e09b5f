//! Maintenance windows: on some weekdays, from a UTC start time for a duration (which may run
//! past midnight into the next day).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("maintenanceWindow.days: {0:?} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day(String),
    #[error("maintenanceWindow.start: {0:?} is not HH:MM (UTC)")]
    Start(String),
    #[error("maintenanceWindow.durationMinutes: must be 1–10080")]
    Duration,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// When upgrades may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Days on which the window opens (0 = Monday).
    pub days: Vec<u8>,
    /// Minutes after 00:00 UTC when it opens.
    pub start_minute: u32,
    pub duration_minutes: u32,
}

impl Window {
    /// From the CRD's fields: `days` (e.g. `["Mon", "Tue"]`, empty = every day), `start`
    /// `"HH:MM"` (UTC) and `durationMinutes`.
    pub fn parse(
        days: &[String],
        start: &str,
        duration_minutes: u32,
    ) -> Result<Window, WindowError> {
        let mut ds = Vec::new();
        for d in days {
            let i = DAYS
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d.trim()))
                .ok_or_else(|| WindowError::Day(d.clone()))?;
            ds.push(i as u8);
        }
        if ds.is_empty() {
            ds = (0..7).collect();
        }
        ds.sort_unstable();
        ds.dedup();
        let (h, m) = start
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60 && start.len() == 5)
            .ok_or_else(|| WindowError::Start(start.to_string()))?;
        if duration_minutes == 0 || duration_minutes > 7 * 24 * 60 {
            return Err(WindowError::Duration);
        }
        Ok(Window {
            days: ds,
            start_minute: h * 60 + m,
            duration_minutes,
        })
    }

    /// Whether the window is open at `unix_secs` (UTC).
    pub fn is_open(&self, unix_secs: u64) -> bool {
        let minute_of_week = |secs: u64| {
            let days = secs / 86_400;
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            let weekday = (days + 3) % 7;
            weekday * 1440 + (secs % 86_400) / 60
        };
        let now = minute_of_week(unix_secs);
        const WEEK: u64 = 7 * 1440;
        self.days.iter().any(|&d| {
            let open = d as u64 * 1440 + self.start_minute as u64;
            (now + WEEK - open) % WEEK < self.duration_minutes as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23 was a Monday.
    const MONDAY_0000: u64 = 1_795_392_000;

    fn at(day: u64, h: u64, m: u64) -> u64 {
        MONDAY_0000 + day * 86_400 + h * 3600 + m * 60
    }

    #[test]
    fn monday_anchor_is_a_monday() {
        assert_eq!((MONDAY_0000 / 86_400 + 3) % 7, 0);
    }

    #[test]
    fn opens_on_its_days_and_hours() {
        let w = Window::parse(&["Mon".into(), "wed".into()], "02:00", 120).unwrap();
        assert!(!w.is_open(at(0, 1, 59)));
        assert!(w.is_open(at(0, 2, 0)));
        assert!(w.is_open(at(0, 3, 59)));
        assert!(!w.is_open(at(0, 4, 0)));
        assert!(!w.is_open(at(1, 2, 30)));
        assert!(w.is_open(at(2, 2, 30)));
    }

    #[test]
    fn crosses_midnight_and_the_week_end() {
        let w = Window::parse(&["Sun".into()], "23:00", 180).unwrap();
        assert!(w.is_open(at(6, 23, 30)));
        assert!(w.is_open(at(7, 1, 59))); // Monday of the next week
        assert!(!w.is_open(at(7, 2, 0)));
        let every = Window::parse(&[], "00:00", 1440).unwrap();
        assert!(every.is_open(at(3, 12, 0)));
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(matches!(
            Window::parse(&["Funday".into()], "02:00", 1),
            Err(WindowError::Day(_))
        ));
        for s in ["2:00", "24:00", "02:60", "0200", "ab:cd"] {
            assert!(
                matches!(Window::parse(&[], s, 1), Err(WindowError::Start(_))),
                "{s}"
            );
        }
        assert_eq!(Window::parse(&[], "02:00", 0), Err(WindowError::Duration));
    }
}
