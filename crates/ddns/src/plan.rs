//! When the DDNS writer writes, as a pure function of time, the desired
//! addresses and what it knows of the server: only on a difference, never
//! twice within the minimum interval (changes in between are coalesced into
//! one write), and after a failure only when its backoff has passed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Pacing of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Least time between two writes (provider rate limits, flapping gateways).
    pub min_interval: Duration,
    /// Wait after the first failure; doubled after each further one.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
}

impl Default for PlanConfig {
    /// 30 s between writes; retries after 5 s, 10 s, … up to 5 min.
    fn default() -> Self {
        PlanConfig {
            min_interval: Duration::from_secs(30),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// A write to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Make the records exactly these (non-empty).
    Set(BTreeSet<Ipv4Addr>),
    /// No healthy gateway: remove the records.
    Remove,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The server already has the desired records.
    Idle,
    /// Write this now.
    Write(Write),
    /// A write is due but not allowed yet: decide again at this time.
    WaitUntil(Instant),
}

/// What the writer knows; updated by [`observed`](Self::observed) and
/// [`written`](Self::written), consulted by [`decide`](Self::decide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterState {
    /// The server's records as last seen or written (None: unknown, e.g. at
    /// start or after a failed write).
    pub known: Option<BTreeSet<Ipv4Addr>>,
    /// When the last write was attempted.
    pub last_write: Option<Instant>,
    /// Consecutive failed writes.
    pub failures: u32,
}

impl WriterState {
    /// Decides at `now` for the `desired` addresses (those of the healthy gateways).
    pub fn decide(
        &self,
        config: &PlanConfig,
        now: Instant,
        desired: &BTreeSet<Ipv4Addr>,
    ) -> Decision {
        if self.known.as_ref() == Some(desired) {
            return Decision::Idle;
        }
        if let Some(last) = self.last_write {
            let not_before = last + self.pause(config);
            if now < not_before {
                return Decision::WaitUntil(not_before);
            }
        }
        Decision::Write(if desired.is_empty() {
            Write::Remove
        } else {
            Write::Set(desired.clone())
        })
    }

    /// The pause after the last write: the minimum interval, or the backoff after failures.
    fn pause(&self, config: &PlanConfig) -> Duration {
        if self.failures == 0 {
            return config.min_interval;
        }
        let factor = 2u32.saturating_pow(self.failures - 1);
        config
            .retry_initial
            .saturating_mul(factor)
            .min(config.retry_max)
    }

    /// The server was read: it has `current`.
    pub fn observed(&mut self, current: BTreeSet<Ipv4Addr>) {
        self.known = Some(current);
    }

    /// `write` was attempted at `now` and succeeded or not.
    pub fn written(&mut self, now: Instant, write: &Write, ok: bool) {
        self.last_write = Some(now);
        if ok {
            self.failures = 0;
            self.known = Some(match write {
                Write::Set(a) => a.clone(),
                Write::Remove => BTreeSet::new(),
            });
        } else {
            self.failures += 1;
            self.known = None;
        }
    }
}

/// One call against an API that holds each A record separately (with an id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOp<Id> {
    /// Point an unwanted record at a missing address (one call instead of two).
    Update(Id, Ipv4Addr),
    /// Add a record for a missing address.
    Create(Ipv4Addr),
    /// Delete an unwanted record (also duplicates of a wanted address).
    Delete(Id),
}

/// The calls that turn `current` records into exactly `desired`: updates
/// and creations first, deletions last, so the name never resolves to
/// nothing while it should resolve to something.
pub fn record_ops<Id: Clone>(
    current: &[(Id, Ipv4Addr)],
    desired: &BTreeSet<Ipv4Addr>,
) -> Vec<RecordOp<Id>> {
    let mut kept = BTreeSet::new();
    let mut surplus = Vec::new();
    for (id, addr) in current {
        if desired.contains(addr) && kept.insert(*addr) {
            continue;
        }
        surplus.push(id.clone());
    }
    let mut missing = desired.iter().filter(|a| !kept.contains(*a));
    let mut ops = Vec::new();
    let mut surplus = surplus.into_iter();
    for addr in missing.by_ref() {
        match surplus.next() {
            Some(id) => ops.push(RecordOp::Update(id, *addr)),
            None => ops.push(RecordOp::Create(*addr)),
        }
    }
    ops.extend(surplus.map(RecordOp::Delete));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<Ipv4Addr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn config() -> PlanConfig {
        PlanConfig {
            min_interval: Duration::from_secs(30),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(40),
        }
    }

    #[test]
    fn record_ops_reuse_update_create_and_delete() {
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        let current = vec![
            (1, ip("192.0.2.1")),
            (2, ip("192.0.2.2")),
            (3, ip("192.0.2.2")),
            (4, ip("192.0.2.4")),
        ];
        let ops = record_ops(
            &current,
            &set(&["192.0.2.1", "192.0.2.5", "192.0.2.6", "192.0.2.7"]),
        );
        assert_eq!(
            ops,
            vec![
                RecordOp::Update(2, ip("192.0.2.5")),
                RecordOp::Update(3, ip("192.0.2.6")),
                RecordOp::Update(4, ip("192.0.2.7")),
            ]
        );
        let ops = record_ops(&current, &set(&["192.0.2.2"]));
        assert_eq!(
            ops,
            vec![
                RecordOp::Delete(1),
                RecordOp::Delete(3),
                RecordOp::Delete(4)
            ]
        );
        let ops = record_ops::<u32>(&[], &set(&["192.0.2.9"]));
        assert_eq!(ops, vec![RecordOp::Create(ip("192.0.2.9"))]);
        assert_eq!(record_ops(&current[..1], &set(&["192.0.2.1"])), vec![]);
    }

    #[test]
    fn writes_at_start_then_only_differences() {
        let t0 = Instant::now();
        let mut s = WriterState::default();
        let a = set(&["192.0.2.1", "192.0.2.2"]);
        assert_eq!(
            s.decide(&config(), t0, &a),
            Decision::Write(Write::Set(a.clone()))
        );
        s.written(t0, &Write::Set(a.clone()), true);
        assert_eq!(
            s.decide(&config(), t0 + Duration::from_secs(60), &a),
            Decision::Idle
        );
    }

    #[test]
    fn an_observed_match_needs_no_write() {
        let mut s = WriterState::default();
        let a = set(&["192.0.2.1"]);
        s.observed(a.clone());
        assert_eq!(s.decide(&config(), Instant::now(), &a), Decision::Idle);
    }

    #[test]
    fn coalesces_changes_within_the_minimum_interval() {
        let t0 = Instant::now();
        let mut s = WriterState::default();
        let a = set(&["192.0.2.1", "192.0.2.2"]);
        s.written(t0, &Write::Set(a), true);
        let b = set(&["192.0.2.1"]);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            s.decide(&config(), t1, &b),
            Decision::WaitUntil(t0 + Duration::from_secs(30))
        );
        let c = set(&["192.0.2.1", "192.0.2.3"]);
        let t2 = t0 + Duration::from_secs(30);
        assert_eq!(s.decide(&config(), t2, &c), Decision::Write(Write::Set(c)));
    }

    #[test]
    fn no_healthy_gateway_removes_the_records() {
        let t0 = Instant::now();
        let mut s = WriterState::default();
        s.observed(set(&["192.0.2.1"]));
        assert_eq!(
            s.decide(&config(), t0, &BTreeSet::new()),
            Decision::Write(Write::Remove)
        );
        s.written(t0, &Write::Remove, true);
        assert_eq!(s.decide(&config(), t0, &BTreeSet::new()), Decision::Idle);
    }

    #[test]
    fn retries_with_doubling_capped_backoff() {
        let t0 = Instant::now();
        let mut s = WriterState::default();
        let a = set(&["192.0.2.1"]);
        let w = Write::Set(a.clone());
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            s.written(now, &w, false);
            let Decision::WaitUntil(at) = s.decide(&config(), now, &a) else {
                panic!("must wait")
            };
            waits.push((at - now).as_secs());
            assert_eq!(s.decide(&config(), at, &a), Decision::Write(w.clone()));
            now = at;
        }
        assert_eq!(waits, vec![5, 10, 20, 40, 40]);
        s.written(now, &w, true);
        assert_eq!(s.failures, 0);
        assert_eq!(s.decide(&config(), now, &a), Decision::Idle);
    }
}
