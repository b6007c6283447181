//! Wall-clock time as the core sees it: always passed in, never read.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. The core never reads a clock: callers pass
/// `now` in, which is what lets tests and the simulator run on simulated time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `secs` seconds (saturating).
    pub fn add_secs(self, secs: u64) -> Self {
        let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// This time plus `ms` milliseconds (saturating).
    pub fn add_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (negative when `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// As a chrono time (clamped to chrono's range).
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// From a chrono time.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t.timestamp_millis())
    }

    /// From a [`std::time::SystemTime`] the caller read. The core reads no clock, so a host
    /// gets `now` as `Timestamp::from_system_time(SystemTime::now())` (or
    /// `Timestamp::from_datetime(chrono::Utc::now())`); tests pass any fixed value. Times
    /// before the epoch are negative; beyond the range, saturated.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use huskies_core::Timestamp;
    /// let t = Timestamp::from_system_time(UNIX_EPOCH + Duration::from_millis(1_500));
    /// assert_eq!(t.as_millis(), 1_500);
    /// let now = Timestamp::from_system_time(SystemTime::now()); // what a host does
    /// # let _ = now;
    /// ```
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Self(ms(after)),
            Err(before) => Self(ms(before.duration()).saturating_neg()),
        }
    }

    /// RFC 3339 UTC with millisecond precision, e.g. `2026-11-21T17:27:19.000Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self::from_datetime(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(Timestamp::from_millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_millis(i64::MAX).add_secs(5).as_millis(), i64::MAX);
    }
}
