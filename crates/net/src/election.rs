//! Active/standby election between routers sharing one VIP (two or more), as a pure
//! state machine over heartbeats and time, plus the heartbeat wire format.
//!
//! Protocol (VRRP-like, unicast UDP over the gateway network):
//! - Each router sends a [`Heartbeat`] to every peer every interval, saying its
//!   priority and its current role.
//! - A router starts as standby and listens for `dead_interval` (about three
//!   intervals) before claiming the VIP, so a restarted router never grabs
//!   the VIP from a live active peer.
//! - A standby becomes active when it has heard no active peer for
//!   `dead_interval` and beats every standby peer it hears (or hears none).
//! - No preemption: a live active peer keeps the VIP even if this router has a
//!   higher priority. Priority (then the higher address) only breaks ties:
//!   all standby (all just started, or the active one died) → the winner
//!   becomes active; several active (after a partition heals) → all but the
//!   winner step down.
//! - Authentication and replay protection of the datagrams are the
//!   transport's job (the router's `heartbeat` module); this machine trusts
//!   what it is given.

use std::collections::{BTreeMap, BTreeSet};
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

/// What this router last heard from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's last heartbeat.
    pub heartbeat: Heartbeat,
    /// When it arrived.
    pub heard_at: Instant,
}

/// The election state of one router among its configured peers.
#[derive(Debug, Clone)]
pub struct VipElection {
    priority: u8,
    address: Ipv4Addr,
    peer_addresses: BTreeSet<Ipv4Addr>,
    dead_interval: Duration,
    started_at: Instant,
    role: Role,
    peers: BTreeMap<Ipv4Addr, PeerView>,
}

impl VipElection {
    /// A router with `priority` and own `address` (tie breaker) among
    /// `peers` (the other routers' addresses; none means standalone, always
    /// active). Its own address among `peers` is ignored.
    pub fn new(
        priority: u8,
        address: Ipv4Addr,
        peers: impl IntoIterator<Item = Ipv4Addr>,
        dead_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            priority,
            address,
            peer_addresses: peers.into_iter().filter(|p| *p != address).collect(),
            dead_interval,
            started_at: now,
            role: Role::Standby,
            peers: BTreeMap::new(),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Every configured peer with its last heartbeat, if any (a resigned peer has none).
    pub fn peers(&self) -> impl Iterator<Item = (Ipv4Addr, Option<PeerView>)> + '_ {
        self.peer_addresses
            .iter()
            .map(|a| (*a, self.peers.get(a).copied()))
    }

    /// The last heartbeat from `peer`, if any.
    pub fn peer(&self, peer: Ipv4Addr) -> Option<PeerView> {
        self.peers.get(&peer).copied()
    }

    /// The peers heard within the dead interval, with their last heartbeat.
    fn alive(&self, now: Instant) -> impl Iterator<Item = (Ipv4Addr, Heartbeat)> + '_ {
        self.peers
            .iter()
            .filter(move |(_, p)| now.saturating_duration_since(p.heard_at) < self.dead_interval)
            .map(|(a, p)| (*a, p.heartbeat))
    }

    /// Whether `peer` was heard within the dead interval.
    pub fn peer_alive(&self, peer: Ipv4Addr, now: Instant) -> bool {
        self.alive(now).any(|(a, _)| a == peer)
    }

    /// The heartbeat this router sends now.
    pub fn heartbeat(&self, vip: Ipv4Addr) -> Heartbeat {
        Heartbeat {
            priority: self.priority,
            role: self.role,
            vip,
        }
    }

    /// Records a heartbeat from `from`; ignored unless `from` is a configured
    /// peer. Priority 0 means the peer resigns (clean shutdown, as in VRRP):
    /// it counts as dead at once, so a standby need not wait `dead_interval`.
    pub fn on_heartbeat(&mut self, from: Ipv4Addr, heartbeat: Heartbeat, now: Instant) {
        if !self.peer_addresses.contains(&from) {
            return;
        }
        if heartbeat.priority == RESIGN_PRIORITY {
            self.peers.remove(&from);
        } else {
            self.peers.insert(
                from,
                PeerView {
                    heartbeat,
                    heard_at: now,
                },
            );
        }
    }

    /// The heartbeat a router sends when it shuts down cleanly.
    pub fn resign_heartbeat(vip: Ipv4Addr) -> Heartbeat {
        Heartbeat {
            priority: RESIGN_PRIORITY,
            role: Role::Standby,
            vip,
        }
    }

    /// Whether this router beats `peer` (at `peer_address`) in a tie.
    fn wins_tie(&self, peer_address: Ipv4Addr, peer: &Heartbeat) -> bool {
        (self.priority, self.address) > (peer.priority, peer_address)
    }

    /// When [`Self::tick`] could next change the role without a new heartbeat
    /// arriving: the end of the start-up hold or a peer timing out, whichever
    /// comes first after `now`, while standby. `None` when only a heartbeat
    /// can change anything.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.peer_addresses.is_empty() || self.role == Role::Active {
            return None;
        }
        std::iter::once(self.started_at + self.dead_interval)
            .chain(self.peers.values().map(|p| p.heard_at + self.dead_interval))
            .filter(|at| *at > now)
            .min()
    }

    /// The role the rules give at `now`.
    ///
    /// - No peers: active.
    /// - No peer alive: standby during the start-up hold, then active.
    /// - An alive peer is active: an active router keeps the VIP only if it
    ///   beats every active peer (a healed partition); a standby stays standby
    ///   (no preemption).
    /// - Every alive peer is standby: an active router stays active; a standby
    ///   takes the VIP if it beats every alive peer — during the start-up hold
    ///   only once it has heard every configured peer (else an active one it
    ///   has not heard yet may exist).
    fn decide(&self, now: Instant) -> Role {
        if self.peer_addresses.is_empty() {
            return Role::Active;
        }
        let alive: Vec<(Ipv4Addr, Heartbeat)> = self.alive(now).collect();
        let holding = now.saturating_duration_since(self.started_at) < self.dead_interval;
        if alive.is_empty() {
            return if holding { Role::Standby } else { Role::Active };
        }
        let beats = |(a, hb): &(Ipv4Addr, Heartbeat)| self.wins_tie(*a, hb);
        let actives: Vec<(Ipv4Addr, Heartbeat)> = alive
            .iter()
            .copied()
            .filter(|(_, hb)| hb.role == Role::Active)
            .collect();
        let wins = if !actives.is_empty() {
            self.role == Role::Active && actives.iter().all(beats)
        } else {
            self.role == Role::Active
                || ((!holding || alive.len() == self.peer_addresses.len())
                    && alive.iter().all(beats))
        };
        if wins { Role::Active } else { Role::Standby }
    }

    /// Re-evaluates the role at `now`; returns the new role when it changed.
    pub fn tick(&mut self, now: Instant) -> Option<Role> {
        let next = self.decide(now);
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
        let mut e = VipElection::new(100, A, [], DEAD, t0);
        assert_eq!(e.tick(t0), Some(Role::Active));
    }

    #[test]
    fn silent_peer_means_active_after_dead_interval_not_before() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, [B], DEAD, t0);
        assert_eq!(e.tick(t0 + Duration::from_secs(2)), None);
        assert_eq!(e.role(), Role::Standby);
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
    }

    #[test]
    fn restarted_router_does_not_preempt_live_active_peer() {
        let t0 = Instant::now();
        let mut e = VipElection::new(255, A, [B], DEAD, t0);
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
        let mut e = VipElection::new(100, A, [B], DEAD, t0);
        e.on_heartbeat(B, hb(200, Role::Active), t0);
        assert_eq!(e.tick(t0 + Duration::from_millis(2900)), None);
        assert_eq!(e.tick(t0 + Duration::from_millis(3000)), Some(Role::Active));
    }

    #[test]
    fn both_standby_higher_priority_wins() {
        let t0 = Instant::now();
        let mut high = VipElection::new(200, A, [B], DEAD, t0);
        let mut low = VipElection::new(100, B, [A], DEAD, t0);
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
        let mut a = VipElection::new(100, A, [B], DEAD, t0);
        let mut b = VipElection::new(100, B, [A], DEAD, t0);
        a.on_heartbeat(B, hb(100, Role::Standby), t0);
        b.on_heartbeat(A, hb(100, Role::Standby), t0);
        assert_eq!(a.tick(t0), None);
        assert_eq!(b.tick(t0), Some(Role::Active));
    }

    #[test]
    fn split_brain_resolves_to_one_active() {
        let t0 = Instant::now();
        let late = t0 + DEAD;
        let mut a = VipElection::new(100, A, [B], DEAD, t0);
        let mut b = VipElection::new(150, B, [A], DEAD, t0);
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
        let mut e = VipElection::new(100, A, [B], DEAD, t0);
        e.on_heartbeat(
            Ipv4Addr::new(10, 0, 0, 99),
            hb(250, Role::Active),
            t0 + DEAD,
        );
        assert!(e.peer(B).is_none());
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
    }

    #[test]
    fn resigning_active_peer_hands_over_without_waiting() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, [B], DEAD, t0);
        let now = t0 + Duration::from_secs(10);
        e.on_heartbeat(B, hb(200, Role::Active), now);
        assert_eq!(e.tick(now), None);
        e.on_heartbeat(B, VipElection::resign_heartbeat(VIP), now);
        assert_eq!(e.tick(now), Some(Role::Active));
    }

    #[test]
    fn next_deadline_is_when_the_peer_times_out() {
        let t0 = Instant::now();
        let mut e = VipElection::new(100, A, [B], DEAD, t0);
        assert_eq!(e.next_deadline(t0), Some(t0 + DEAD));
        let heard = t0 + Duration::from_secs(5);
        e.on_heartbeat(B, hb(200, Role::Active), heard);
        assert_eq!(e.next_deadline(heard), Some(heard + DEAD));
        assert_eq!(e.tick(heard + DEAD), Some(Role::Active));
        assert_eq!(e.next_deadline(t0), None);
        assert_eq!(VipElection::new(1, A, [], DEAD, t0).next_deadline(t0), None);
    }

    #[test]
    fn active_stays_active_while_peer_is_standby() {
        let t0 = Instant::now();
        let mut e = VipElection::new(1, A, [B], DEAD, t0);
        assert_eq!(e.tick(t0 + DEAD), Some(Role::Active));
        e.on_heartbeat(B, hb(255, Role::Standby), t0 + DEAD);
        assert_eq!(e.tick(t0 + DEAD), None);
        assert_eq!(e.role(), Role::Active);
    }
}

#[cfg(test)]
mod many_routers {
    use super::*;

    const DEAD: Duration = Duration::from_secs(3);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn addr(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 2 + i)
    }

    /// `n` routers with the given priorities, every one peering with all others.
    fn routers(priorities: &[u8], t0: Instant) -> Vec<VipElection> {
        let all: Vec<Ipv4Addr> = (0..priorities.len() as u8).map(addr).collect();
        priorities
            .iter()
            .enumerate()
            .map(|(i, p)| VipElection::new(*p, addr(i as u8), all.iter().copied(), DEAD, t0))
            .collect()
    }

    /// Delivers every live router's heartbeat to every other live router, then ticks all.
    fn exchange(rs: &mut [VipElection], live: &[bool], now: Instant) {
        let beats: Vec<(Ipv4Addr, Heartbeat)> = rs
            .iter()
            .zip(live)
            .filter(|(_, l)| **l)
            .map(|(r, _)| (r.address, r.heartbeat(VIP)))
            .collect();
        for (r, l) in rs.iter_mut().zip(live) {
            if !*l {
                continue;
            }
            for (from, hb) in &beats {
                r.on_heartbeat(*from, *hb, now);
            }
            r.tick(now);
        }
    }

    fn actives(rs: &[VipElection], live: &[bool]) -> Vec<usize> {
        (0..rs.len())
            .filter(|i| live[*i] && rs[*i].role() == Role::Active)
            .collect()
    }

    #[test]
    fn own_address_among_peers_is_ignored() {
        let t0 = Instant::now();
        let e = VipElection::new(1, addr(0), [addr(0), addr(1)], DEAD, t0);
        assert_eq!(e.peers().map(|(a, _)| a).collect::<Vec<_>>(), vec![addr(1)]);
    }

    #[test]
    fn three_routers_elect_exactly_the_highest_priority() {
        let t0 = Instant::now();
        let mut rs = routers(&[100, 200, 150], t0);
        let live = [true; 3];
        for s in 0..6 {
            exchange(&mut rs, &live, t0 + Duration::from_millis(500 * s));
        }
        assert_eq!(actives(&rs, &live), vec![1]);
    }

    #[test]
    fn during_the_hold_a_standby_waits_until_it_has_heard_every_peer() {
        let t0 = Instant::now();
        let mut e = VipElection::new(250, addr(0), [addr(1), addr(2)], DEAD, t0);
        // Only one of two peers heard: an unheard one may be active; wait.
        e.on_heartbeat(
            addr(1),
            Heartbeat {
                priority: 1,
                role: Role::Standby,
                vip: VIP,
            },
            t0,
        );
        assert_eq!(e.tick(t0), None);
        // Both heard and both standby with lower priority: take the VIP at once.
        e.on_heartbeat(
            addr(2),
            Heartbeat {
                priority: 2,
                role: Role::Standby,
                vip: VIP,
            },
            t0,
        );
        assert_eq!(e.tick(t0), Some(Role::Active));
    }

    #[test]
    fn when_the_active_dies_the_best_survivor_takes_over_alone() {
        let t0 = Instant::now();
        let mut rs = routers(&[200, 100, 150], t0);
        let mut live = [true; 3];
        let mut now = t0;
        for _ in 0..6 {
            now += Duration::from_millis(500);
            exchange(&mut rs, &live, now);
        }
        assert_eq!(actives(&rs, &live), vec![0]);
        live[0] = false;
        let died = now;
        let mut took = None;
        while now < died + DEAD * 3 {
            now += Duration::from_millis(100);
            exchange(&mut rs, &live, now);
            let a = actives(&rs, &live);
            assert!(a.len() <= 1, "two actives at once: {a:?}");
            if took.is_none() && a == vec![2] {
                took = Some(now - died);
            }
        }
        assert_eq!(
            actives(&rs, &live),
            vec![2],
            "highest surviving priority active"
        );
        let took = took.expect("a survivor took the VIP");
        assert!(
            took >= DEAD - Duration::from_millis(500) && took <= DEAD + Duration::from_millis(200),
            "{took:?}"
        );
    }

    #[test]
    fn a_healed_partition_leaves_one_active_among_three() {
        let t0 = Instant::now();
        let late = t0 + DEAD;
        let mut rs = routers(&[100, 150, 120], t0);
        for r in &mut rs {
            assert_eq!(r.tick(late), Some(Role::Active));
        }
        exchange(&mut rs, &[true; 3], late);
        assert_eq!(actives(&rs, &[true; 3]), vec![1]);
    }

    #[test]
    fn a_restarted_router_does_not_preempt_among_three() {
        let t0 = Instant::now();
        let mut rs = routers(&[100, 120, 250], t0);
        let mut live = [true, true, false];
        let mut now = t0;
        for _ in 0..8 {
            now += Duration::from_millis(500);
            exchange(&mut rs, &live, now);
        }
        assert_eq!(actives(&rs, &live), vec![1]);
        // Router 2 (highest priority) starts late: it must stay standby.
        rs[2] = VipElection::new(250, addr(2), [addr(0), addr(1)], DEAD, now);
        live[2] = true;
        for _ in 0..20 {
            now += Duration::from_millis(500);
            exchange(&mut rs, &live, now);
            assert_eq!(actives(&rs, &live), vec![1]);
        }
    }

    #[test]
    fn next_deadline_is_the_first_peer_to_time_out() {
        let t0 = Instant::now();
        let mut e = VipElection::new(1, addr(0), [addr(1), addr(2)], DEAD, t0);
        let later = t0 + Duration::from_secs(10);
        e.on_heartbeat(
            addr(1),
            Heartbeat {
                priority: 9,
                role: Role::Active,
                vip: VIP,
            },
            later,
        );
        e.on_heartbeat(
            addr(2),
            Heartbeat {
                priority: 9,
                role: Role::Standby,
                vip: VIP,
            },
            later + Duration::from_secs(1),
        );
        assert_eq!(e.next_deadline(later), Some(later + DEAD));
        assert_eq!(
            e.next_deadline(later + DEAD),
            Some(later + Duration::from_secs(1) + DEAD)
        );
        assert_eq!(e.next_deadline(later + DEAD * 2), None);
    }
}
