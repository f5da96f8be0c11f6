//! Active/standby election between two routers sharing one VIP, as a pure
//! state machine over heartbeats and time, plus the heartbeat wire format.
//!
//! Protocol (VRRP-like, unicast UDP over the gateway network):
//! - Each router sends a [`Heartbeat`] to its peer every interval, saying its
//!   priority and its current role.
//! - A router starts as standby and listens for `dead_interval` (about three
//!   intervals) before claiming the VIP, so a restarted router never grabs
//!   the VIP from a live active peer.
//! - A standby becomes active when it has heard nothing from the peer for
//!   `dead_interval`.
//! - No preemption: a live active peer keeps the VIP even if this router has a
//!   higher priority. Priority (then the higher address) only breaks ties:
//!   both standby (both just started) → the winner becomes active; both
//!   active (after a partition heals) → the loser steps down.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::egress::Role;

/// Magic bytes at the start of every heartbeat.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"VPNO";
/// Heartbeat format version.
pub const HEARTBEAT_VERSION: u8 = 1;
/// Priority announcing a clean shutdown; not usable as a router priority.
pub const RESIGN_PRIORITY: u8 = 0;
/// Encoded heartbeat length in bytes.
pub const HEARTBEAT_LEN: usize = 12;

/// One heartbeat datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// Sender's priority (higher wins ties).
    pub priority: u8,
    /// Sender's current role.
    pub role: Role,
    /// The VIP the sender serves (heartbeats for another VIP are ignored).
    pub vip: Ipv4Addr,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Wrong length.
    #[error("heartbeat has {0} bytes, expected {HEARTBEAT_LEN}")]
    Length(usize),
    /// Wrong magic or version.
    #[error("not a vpn-operator heartbeat (bad magic or version)")]
    Magic,
    /// Unknown role byte.
    #[error("unknown role {0} in heartbeat")]
    Role(u8),
}

impl Heartbeat {
    /// Encodes as `magic(4) version(1) role(1) priority(1) reserved(1) vip(4)`.
    pub fn encode(&self) -> [u8; HEARTBEAT_LEN] {
        let mut b = [0u8; HEARTBEAT_LEN];
        b[..4].copy_from_slice(&HEARTBEAT_MAGIC);
        b[4] = HEARTBEAT_VERSION;
        b[5] = match self.role {
            Role::Standby => 0,
            Role::Active => 1,
        };
        b[6] = self.priority;
        b[8..12].copy_from_slice(&self.vip.octets());
        b
    }

    /// Decodes a datagram.
    pub fn decode(b: &[u8]) -> Result<Self, HeartbeatError> {
        if b.len() != HEARTBEAT_LEN {
            return Err(HeartbeatError::Length(b.len()));
        }
        if b[..4] != HEARTBEAT_MAGIC || b[4] != HEARTBEAT_VERSION {
            return Err(HeartbeatError::Magic);
        }
        let role = match b[5] {
            0 => Role::Standby,
            1 => Role::Active,
            other => return Err(HeartbeatError::Role(other)),
        };
        Ok(Self {
            priority: b[6],
            role,
            vip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        })
    }
}

/// What this router last heard from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's last heartbeat.
    pub heartbeat: Heartbeat,
    /// When it arrived.
    pub heard_at: Instant,
}

/// The election state of one router.
#[derive(Debug, Clone)]
pub struct VipElection {
    priority: u8,
    address: Ipv4Addr,
    peer_address: Option<Ipv4Addr>,
    dead_interval: Duration,
    started_at: Instant,
    role: Role,
    peer: Option<PeerView>,
}

impl VipElection {
    /// A router with `priority` and own `address` (tie breaker); `peer_address`
    /// `None` means standalone (always active).
    pub fn new(
        priority: u8,
        address: Ipv4Addr,
        peer_address: Option<Ipv4Addr>,
        dead_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            priority,
            address,
            peer_address,
            dead_interval,
            started_at: now,
            role: Role::Standby,
            peer: None,
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The last heartbeat from the peer, if any.
    pub fn peer(&self) -> Option<PeerView> {
        self.peer
    }

    /// Whether the peer was heard within the dead interval.
    pub fn peer_alive(&self, now: Instant) -> bool {
        self.peer
            .is_some_and(|p| now.saturating_duration_since(p.heard_at) < self.dead_interval)
    }

    /// The heartbeat this router sends now.
    pub fn heartbeat(&self, vip: Ipv4Addr) -> Heartbeat {
        Heartbeat {
            priority: self.priority,
            role: self.role,
            vip,
        }
    }

    /// Records a heartbeat from `from`; ignored unless `from` is the configured
    /// peer. Priority 0 means the peer resigns (clean shutdown, as in VRRP):
    /// it counts as dead at once, so the standby need not wait `dead_interval`.
    pub fn on_heartbeat(&mut self, from: Ipv4Addr, heartbeat: Heartbeat, now: Instant) {
        if self.peer_address != Some(from) {
            return;
        }
        self.peer = (heartbeat.priority != RESIGN_PRIORITY).then_some(PeerView {
            heartbeat,
            heard_at: now,
        });
    }

    /// The heartbeat a router sends when it shuts down cleanly.
    pub fn resign_heartbeat(vip: Ipv4Addr) -> Heartbeat {
        Heartbeat {
            priority: RESIGN_PRIORITY,
            role: Role::Standby,
            vip,
        }
    }

    /// Whether this router beats the peer in a tie.
    fn wins_tie(&self, peer: &Heartbeat) -> bool {
        let peer_address = self.peer_address.unwrap_or(Ipv4Addr::UNSPECIFIED);
        (self.priority, self.address) > (peer.priority, peer_address)
    }

    /// When [`Self::tick`] could next change the role without a new heartbeat
    /// arriving: the moment the peer (or the start-up hold) times out while
    /// standby. `None` when only a heartbeat can change anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.peer_address.is_none() || self.role == Role::Active {
            return None;
        }
        let hold = self.started_at + self.dead_interval;
        Some(match self.peer {
            Some(p) => hold.max(p.heard_at + self.dead_interval),
            None => hold,
        })
    }

    /// Re-evaluates the role at `now`; returns the new role when it changed.
    pub fn tick(&mut self, now: Instant) -> Option<Role> {
        let next = if self.peer_address.is_none() {
            Role::Active
        } else if !self.peer_alive(now) {
            if now.saturating_duration_since(self.started_at) < self.dead_interval {
                Role::Standby
            } else {
                Role::Active
            }
        } else {
            let peer = self.peer.expect("alive peer was heard").heartbeat;
            match (self.role, peer.role) {
                (Role::Active, Role::Active) if self.wins_tie(&peer) => Role::Active,
                (Role::Active, Role::Active) => Role::Standby,
                (Role::Active, Role::Standby) => Role::Active,
                (Role::Standby, Role::Active) => Role::Standby,
                (Role::Standby, Role::Standby) if self.wins_tie(&peer) => Role::Active,
                (Role::Standby, Role::Standby) => Role::Standby,
            }
        };
        (next != self.role).then(|| {
            self.role = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(3);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    fn hb(priority: u8, role: Role) -> Heartbeat {
        Heartbeat {
            priority,
            role,
            vip: VIP,
        }
    }

    #[test]
    fn heartbeat_roundtrip_and_rejects_garbage() {
        for role in [Role::Active, Role::Standby] {
            let h = hb(200, role);
            assert_eq!(Heartbeat::decode(&h.encode()), Ok(h));
        }
        assert_eq!(Heartbeat::decode(b"short"), Err(HeartbeatError::Length(5)));
        let mut bad = hb(1, Role::Active).encode();
        bad[0] = b'X';
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::Magic));
        let mut bad = hb(1, Role::Active).encode();
        bad[4] = 9;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::Magic));
        let mut bad = hb(1, Role::Active).encode();
        bad[5] = 7;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::Role(7)));
    }

    #[test]
    fn standalone_is_active_at_once() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, None, DEAD, t0);
        assert_eq!(e.tick(t0), Some(Role::Active));
    }

    #[test]
    fn silent_peer_means_active_after_dead_interval_not_before() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, Some(B), DEAD, t0);
        assert_eq!(e.tick(t0 + Duration::from_secs(2)), None);
        assert_eq!(e.role(), Role::Standby);
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
    }

    #[test]
    fn restarted_router_does_not_preempt_live_active_peer() {
        let t0 = Instant::now();
        let mut e = VipElection::new(255, A, Some(B), DEAD, t0);
        for s in 0..10 {
            let now = t0 + Duration::from_secs(s);
            e.on_heartbeat(B, hb(1, Role::Active), now);
            assert_eq!(e.tick(now), None);
            assert_eq!(e.role(), Role::Standby);
        }
    }

    #[test]
    fn standby_takes_over_when_active_goes_silent() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, Some(B), DEAD, t0);
        e.on_heartbeat(B, hb(200, Role::Active), t0);
        assert_eq!(e.tick(t0 + Duration::from_millis(2900)), None);
        assert_eq!(e.tick(t0 + Duration::from_millis(3000)), Some(Role::Active));
    }

    #[test]
    fn both_standby_higher_priority_wins() {
        let t0 = Instant::now();
        let mut high = VipElection::new(200, A, Some(B), DEAD, t0);
        let mut low = VipElection::new(100, B, Some(A), DEAD, t0);
        high.on_heartbeat(B, low.heartbeat(VIP), t0);
        low.on_heartbeat(A, high.heartbeat(VIP), t0);
        assert_eq!(high.tick(t0), Some(Role::Active));
        assert_eq!(low.tick(t0), None);
        low.on_heartbeat(A, high.heartbeat(VIP), t0);
        assert_eq!(low.tick(t0), None);
        assert_eq!(low.role(), Role::Standby);
    }

    #[test]
    fn equal_priority_higher_address_wins() {
        let t0 = Instant::now();
        let mut a = VipElection::new(100, A, Some(B), DEAD, t0);
        let mut b = VipElection::new(100, B, Some(A), DEAD, t0);
        a.on_heartbeat(B, hb(100, Role::Standby), t0);
        b.on_heartbeat(A, hb(100, Role::Standby), t0);
        assert_eq!(a.tick(t0), None);
        assert_eq!(b.tick(t0), Some(Role::Active));
    }

    #[test]
    fn split_brain_resolves_to_one_active() {
        let t0 = Instant::now();
        let late = t0 + DEAD;
        let mut a = VipElection::new(100, A, Some(B), DEAD, t0);
        let mut b = VipElection::new(150, B, Some(A), DEAD, t0);
        // partitioned: both go active
        assert_eq!(a.tick(late), Some(Role::Active));
        assert_eq!(b.tick(late), Some(Role::Active));
        // partition heals
        a.on_heartbeat(B, b.heartbeat(VIP), late);
        b.on_heartbeat(A, a.heartbeat(VIP), late);
        assert_eq!(a.tick(late), Some(Role::Standby));
        assert_eq!(b.tick(late), None);
        assert_eq!(b.role(), Role::Active);
    }

    #[test]
    fn heartbeats_from_strangers_are_ignored() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, Some(B), DEAD, t0);
        e.on_heartbeat(
            Ipv4Addr::new(10, 0, 0, 99),
            hb(250, Role::Active),
            t0 + DEAD,
        );
        assert!(e.peer().is_none());
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
    }

    #[test]
    fn resigning_active_peer_hands_over_without_waiting() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, Some(B), DEAD, t0);
        let now = t0 + Duration::from_secs(10);
        e.on_heartbeat(B, hb(200, Role::Active), now);
        assert_eq!(e.tick(now), None);
        e.on_heartbeat(B, VipElection::resign_heartbeat(VIP), now);
        assert_eq!(e.tick(now), Some(Role::Active));
    }

    #[test]
    fn next_deadline_is_when_the_peer_times_out() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, Some(B), DEAD, t0);
        assert_eq!(e.next_deadline(), Some(t0 + DEAD));
        let heard = t0 + Duration::from_secs(5);
        e.on_heartbeat(B, hb(200, Role::Active), heard);
        assert_eq!(e.next_deadline(), Some(heard + DEAD));
        assert_eq!(e.tick(heard + DEAD), Some(Role::Active));
        assert_eq!(e.next_deadline(), None);
        assert_eq!(VipElection::new(1, A, None, DEAD, t0).next_deadline(), None);
    }

    #[test]
    fn active_stays_active_while_peer_is_standby() {
        let t0 = Instant::now();
        let mut e = VipElection::new(1, A, Some(B), DEAD, t0);
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
        e.on_heartbeat(B, hb(255, Role::Standby), t0 + DEAD);
        assert_eq!(e.tick(t0 + DEAD), None);
        assert_eq!(e.role(), Role::Active);
    }
}
