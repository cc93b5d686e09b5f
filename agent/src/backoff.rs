//! Reconnect backoff and heartbeat health, as pure functions of durations.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Exponential backoff: 1 s, 2 s, 4 s, … capped at 60 s; reset after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

pub const FIRST: Duration = Duration::from_secs(1);
pub const MAX: Duration = Duration::from_secs(60);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// What the operator reads from a node's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    /// Heartbeats late, or the agent reports trouble (failed API calls).
    Degraded,
    Offline,
}

/// Health from the age of the last heartbeat, for an agent that beats every `interval`:
/// within 2 intervals healthy, within 5 degraded, else offline.
pub fn health(since_last: Duration, interval: Duration) -> Health {
    if since_last <= interval * 2 {
        Health::Healthy
    } else if since_last <= interval * 5 {
        Health::Degraded
    } else {
        Health::Offline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_minute_and_resets() {
        let mut b = Backoff::default();
        let seq: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), FIRST);
    }

    #[test]
    fn classifies_heartbeats() {
        let i = Duration::from_secs(30);
        assert_eq!(health(Duration::from_secs(10), i), Health::Healthy);
        assert_eq!(health(Duration::from_secs(60), i), Health::Healthy);
        assert_eq!(health(Duration::from_secs(61), i), Health::Degraded);
        assert_eq!(health(Duration::from_secs(150), i), Health::Degraded);
        assert_eq!(health(Duration::from_secs(151), i), Health::Offline);
    }
}
