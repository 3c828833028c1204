//! The state of one circuit breaker as the state backend keeps it, and the pure rules that
//! move it. All replicas read and write this one record (compare-and-swap), so they agree
//! on the count of consecutive failures and on who sends the probe.

use serde::{Deserialize, Serialize};

/// A breaker's shared record. Times are Unix ms of the gateway that wrote them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub open: bool,
    /// Retryable failures in a row (while closed).
    #[serde(default)]
    pub failures: u32,
    /// When the circuit last opened (or a probe failed).
    #[serde(default)]
    pub opened_ms: u64,
    /// Until when the probe taken by some replica runs; 0: none.
    #[serde(default)]
    pub probe_until_ms: u64,
    /// Times the circuit opened, ever.
    #[serde(default)]
    pub trips: u64,
}

/// How a circuit looks at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    /// Open, recovery time passed: the next delivery is a probe.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// Value of the `acteon_circuit_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

impl Record {
    pub fn state(&self, now_ms: u64, recovery_ms: u64) -> CircuitState {
        if !self.open {
            CircuitState::Closed
        } else if now_ms >= self.opened_ms.saturating_add(recovery_ms) {
            CircuitState::HalfOpen
        } else {
            CircuitState::Open
        }
    }

    /// A delivery admitted while closed failed retryably; opens at `threshold`. A failure
    /// of a delivery that started before the circuit opened changes nothing.
    pub fn failed(&mut self, threshold: u32, now_ms: u64) -> bool {
        if self.open {
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= threshold {
            self.open_at(now_ms);
        }
        true
    }

    /// The probe failed: open again, for a new recovery time.
    pub fn probe_failed(&mut self, now_ms: u64) -> bool {
        self.opened_ms = now_ms;
        self.probe_until_ms = 0;
        self.open = true;
        true
    }

    /// A delivery succeeded (or the peer answered, even with a permanent error): the
    /// provider works, so the circuit closes and the count starts again.
    pub fn succeeded(&mut self) -> bool {
        if !self.open && self.failures == 0 && self.probe_until_ms == 0 {
            return false;
        }
        self.open = false;
        self.failures = 0;
        self.probe_until_ms = 0;
        true
    }

    /// Takes the probe if the recovery time passed and no probe runs; `lease` bounds a
    /// probe whose gateway died before it reported.
    pub fn take_probe(&mut self, now_ms: u64, recovery_ms: u64, lease_ms: u64) -> bool {
        if self.state(now_ms, recovery_ms) != CircuitState::HalfOpen || self.probe_until_ms > now_ms
        {
            return false;
        }
        self.probe_until_ms = now_ms.saturating_add(lease_ms);
        true
    }

    /// Opened by hand.
    pub fn trip(&mut self, now_ms: u64) -> bool {
        self.open_at(now_ms);
        true
    }

    fn open_at(&mut self, now_ms: u64) {
        self.open = true;
        self.opened_ms = now_ms;
        self.probe_until_ms = 0;
        self.trips = self.trips.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_of_failures_in_a_row() {
        let mut r = Record::default();
        assert!(r.failed(3, 10));
        assert!(r.failed(3, 20));
        assert_eq!(r.state(20, 1000), CircuitState::Closed);
        assert!(r.failed(3, 30));
        assert_eq!(r.state(30, 1000), CircuitState::Open);
        assert_eq!((r.opened_ms, r.trips), (30, 1));
        assert!(!r.failed(3, 40), "a straggler's failure changes nothing");
        assert_eq!(r.opened_ms, 30);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut r = Record::default();
        r.failed(3, 1);
        r.failed(3, 2);
        assert!(r.succeeded());
        assert!(!r.succeeded(), "nothing to write when already clean");
        r.failed(3, 3);
        r.failed(3, 4);
        assert_eq!(r.state(5, 1000), CircuitState::Closed);
    }

    #[test]
    fn one_probe_after_the_recovery_time() {
        let mut r = Record::default();
        r.trip(1_000);
        assert!(!r.take_probe(1_500, 1_000, 30_000), "still open");
        assert_eq!(r.state(2_000, 1_000), CircuitState::HalfOpen);
        assert!(r.take_probe(2_000, 1_000, 30_000));
        assert!(!r.take_probe(2_001, 1_000, 30_000), "one probe at a time");
        assert!(
            r.take_probe(32_001, 1_000, 30_000),
            "a probe whose gateway died is taken over after its lease"
        );
        assert!(r.probe_failed(40_000));
        assert_eq!(r.state(40_500, 1_000), CircuitState::Open);
        assert!(r.take_probe(41_000, 1_000, 30_000));
        assert!(r.succeeded());
        assert_eq!(r.state(41_000, 1_000), CircuitState::Closed);
        assert_eq!(r.trips, 1);
    }
}
