//! Gateway health as a small state machine over probe results, with
//! fall/rise thresholds (as haproxy and keepalived count them).

use serde::Serialize;

/// What the router currently believes about one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No probe has answered yet.
    Unknown,
    /// In the nexthop group.
    Healthy,
    /// Out of the nexthop group.
    Unhealthy,
}

/// Counts consecutive probe results of one gateway and decides when it
/// leaves (`fall` consecutive failures) or rejoins (`rise` consecutive
/// successes) the set of healthy gateways.
///
/// The very first result decides at once (a router that just started should
/// not wait `rise` intervals before routing anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHealth {
    fall: u32,
    rise: u32,
    state: HealthState,
    consecutive_failures: u32,
    consecutive_successes: u32,
}

impl GatewayHealth {
    /// A tracker in state [`HealthState::Unknown`]; thresholds below 1 count as 1.
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            state: HealthState::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Whether the gateway belongs in the nexthop group.
    pub fn is_healthy(&self) -> bool {
        self.state == HealthState::Healthy
    }

    /// Consecutive failed probes so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Consecutive successful probes so far.
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// Records one probe result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<HealthState> {
        if ok {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
        }
        let next = match self.state {
            HealthState::Unknown => {
                if ok {
                    HealthState::Healthy
                } else {
                    HealthState::Unhealthy
                }
            }
            HealthState::Healthy if self.consecutive_failures >= self.fall => {
                HealthState::Unhealthy
            }
            HealthState::Unhealthy if self.consecutive_successes >= self.rise => {
                HealthState::Healthy
            }
            same => same,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_immediately() {
        let mut up = GatewayHealth::new(3, 3);
        assert_eq!(up.record(true), Some(HealthState::Healthy));
        let mut down = GatewayHealth::new(3, 3);
        assert_eq!(down.record(false), Some(HealthState::Unhealthy));
    }

    #[test]
    fn falls_after_fall_consecutive_failures_only() {
        let mut h = GatewayHealth::new(3, 2);
        h.record(true);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        // a success in between resets the count
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert!(h.is_healthy());
        assert_eq!(h.record(false), Some(HealthState::Unhealthy));
        assert_eq!(h.consecutive_failures(), 3);
        assert_eq!(h.record(false), None);
    }

    #[test]
    fn rises_after_rise_consecutive_successes_only() {
        let mut h = GatewayHealth::new(1, 3);
        h.record(false);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(HealthState::Healthy));
        assert_eq!(h.consecutive_successes(), 3);
    }

    #[test]
    fn fall_one_drops_on_first_failure_and_zero_thresholds_mean_one() {
        let mut h = GatewayHealth::new(0, 0);
        h.record(true);
        assert_eq!(h.record(false), Some(HealthState::Unhealthy));
        assert_eq!(h.record(true), Some(HealthState::Healthy));
    }
}
