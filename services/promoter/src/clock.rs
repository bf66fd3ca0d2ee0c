//! The release manager's sense of time. Every operation (an event, a command, a timer tick)
//! reads the clock once and hands that `now` to everything it decides and records, so one
//! operation sees one instant and the decisions in [`crate::gates`] take time as an input.
//!
//! The system clock is the default. A test that drives time (a soak, an approval's expiry)
//! hands the release manager a [`ManualClock`] and moves it: directly with
//! [`ReleaseManager::with_clock`](crate::manager::ReleaseManager::with_clock), or, for a whole
//! promoter, by building it with
//! [`Application::build_with_clock`](crate::app::Application::build_with_clock) instead of the
//! kit's [`Service::build`](baton_kit::service::Service::build), which takes only settings.

use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// Where the release manager reads the time.
pub trait Clock: Debug + Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until it is moved.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Mutex::new(start) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = chrono::Duration::from_std(by).expect("a test advances the clock by a representable duration");
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let start = DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .expect("a valid instant")
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(std::time::Duration::from_secs(90));
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
    }
}
