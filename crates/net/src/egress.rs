//! The router's kernel state as data: per-gateway nexthop objects, one
//! resilient nexthop group over the healthy ones, the client subnet's policy
//! rule and default route, and the VIP interface. [`plan`] computes the
//! desired state from configuration, health and role; [`diff`] turns desired
//! and observed state into an ordered list of idempotent [`Change`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

/// One gateway the router may route client traffic through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Name used in logs and `/status` (not in metric labels).
    pub name: String,
    /// The gateway's address on the gateway network (the nexthop).
    pub address: Ipv4Addr,
}

/// Everything the planner needs to know about the router's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// The current gateways; each gets the nexthop id [`EgressConfig::nexthop_id_of`] its address.
    pub gateways: Vec<Gateway>,
    /// The gateway-network interface the nexthops leave through.
    pub interface: String,
    /// Source subnet whose default route the router keeps.
    pub client_subnet: Ipv4Net,
    /// The address clients use as next hop.
    pub vip: Ipv4Net,
    /// Name of the macvlan interface (on `interface`) that carries the VIP.
    pub vip_interface: String,
    /// MAC address of the VIP interface (the same on every router, like VRRP's virtual MAC).
    pub vip_mac: [u8; 6],
    /// Routing table holding the client default route.
    pub table: u32,
    /// Priority of the policy rule sending client traffic to `table`.
    pub rule_priority: u32,
    /// Id of the nexthop group; gateway nexthops follow it.
    pub nexthop_id_base: u32,
    /// Bucket count of the resilient group (fixed for the group's lifetime).
    pub buckets: u16,
    /// Resilient group idle timer in seconds: a bucket idle this long may move to an underweight nexthop.
    pub idle_timer_secs: u32,
}

/// How many low bits of a gateway's address its nexthop id takes: ids stay
/// distinct for every gateway network up to a /16.
pub const NEXTHOP_ID_BITS: u32 = 16;

impl EgressConfig {
    /// The nexthop id of a gateway: derived from its address alone, so it
    /// does not depend on the order or number of the other gateways (a
    /// gateway joining or leaving renumbers nobody, and every router gives
    /// the same gateway the same id).
    pub fn nexthop_id_of(&self, address: Ipv4Addr) -> u32 {
        self.nexthop_id_base + 1 + (u32::from(address) & ((1 << NEXTHOP_ID_BITS) - 1))
    }

    /// The nexthop id of gateway number `index` of [`Self::gateways`].
    pub fn nexthop_id(&self, index: usize) -> u32 {
        self.nexthop_id_of(self.gateways[index].address)
    }

    /// The id of the resilient group.
    pub fn group_id(&self) -> u32 {
        self.nexthop_id_base
    }

    /// The gateway a nexthop id belongs to, if any.
    pub fn gateway_of(&self, nexthop_id: u32) -> Option<&Gateway> {
        self.gateways
            .iter()
            .find(|g| self.nexthop_id_of(g.address) == nexthop_id)
    }

    /// The largest nexthop id base that leaves room for every gateway id.
    pub const MAX_NEXTHOP_ID_BASE: u32 = u32::MAX - (1 << NEXTHOP_ID_BITS);
}

/// Whether this router currently owns the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the VIP and forwards client traffic.
    Active,
    /// Keeps routes ready but does not hold the VIP.
    Standby,
}

/// A nexthop object: one gateway reached through one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NexthopSpec {
    /// Gateway address.
    pub gateway: Ipv4Addr,
    /// Outgoing interface name.
    pub interface: String,
}

/// A resilient nexthop group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSpec {
    /// Group id.
    pub id: u32,
    /// Member nexthop ids (equal weights), ascending.
    pub members: BTreeSet<u32>,
    /// Number of hash buckets.
    pub buckets: u16,
    /// Idle timer in seconds.
    pub idle_timer_secs: u32,
}

/// The client table's default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "group")]
pub enum DefaultRoute {
    /// `default nhid <group>`.
    ViaGroup(u32),
    /// `unreachable default`: no healthy gateway, client traffic goes nowhere.
    Unreachable,
}

/// What a policy rule does with matching packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// `lookup <table>`.
    Lookup(u32),
    /// `unreachable`: the kill switch behind the table, for when the kernel
    /// empties it (a link going down flushes its nexthops and their routes).
    Unreachable,
}

/// The policy rule `from <source> iif <iif> <action> priority <priority>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleSpec {
    /// Rule priority.
    pub priority: u32,
    /// Source prefix.
    pub source: Ipv4Net,
    /// Input interface (the VIP interface: only traffic clients sent to the VIP).
    pub iif: String,
    /// What happens to matching packets.
    pub action: RuleAction,
}

/// The VIP interface: a macvlan on the gateway-network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VipSpec {
    /// Interface name.
    pub interface: String,
    /// Parent (gateway-network) interface.
    pub parent: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Address with prefix length.
    pub address: Ipv4Net,
}

/// The router's share of kernel state, desired or observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EgressState {
    /// Gateway nexthop objects by id.
    pub nexthops: BTreeMap<u32, NexthopSpec>,
    /// The resilient group, absent when no gateway is healthy (a group cannot be empty).
    pub group: Option<GroupSpec>,
    /// Default route of the client table (the table is `table` of the config).
    pub default_route: Option<DefaultRoute>,
    /// Policy rules owned by the router.
    pub rules: BTreeSet<RuleSpec>,
    /// The VIP interface, when held.
    pub vip: Option<VipSpec>,
}

/// Computes the desired state. `healthy(i)` says whether gateway `i` (in
/// configuration order) is healthy.
///
/// Every configured gateway always has a nexthop object; the group holds the
/// healthy ones; with none healthy the route is `unreachable default`. Client
/// traffic that finds no route in the table (the kernel flushed it) hits the
/// `unreachable` rule right after the lookup rule, never the main table. The
/// rules and route are kept on the standby too, so a takeover only has to raise
/// the VIP.
pub fn plan(config: &EgressConfig, healthy: impl Fn(usize) -> bool, role: Role) -> EgressState {
    let nexthops: BTreeMap<u32, NexthopSpec> = config
        .gateways
        .iter()
        .enumerate()
        .map(|(i, gw)| {
            (
                config.nexthop_id(i),
                NexthopSpec {
                    gateway: gw.address,
                    interface: config.interface.clone(),
                },
            )
        })
        .collect();
    let members: BTreeSet<u32> = (0..config.gateways.len())
        .filter(|&i| healthy(i))
        .map(|i| config.nexthop_id(i))
        .collect();
    let group = (!members.is_empty()).then(|| GroupSpec {
        id: config.group_id(),
        members,
        buckets: config.buckets,
        idle_timer_secs: config.idle_timer_secs,
    });
    let default_route = Some(match &group {
        Some(g) => DefaultRoute::ViaGroup(g.id),
        None => DefaultRoute::Unreachable,
    });
    let rule = |priority, action| RuleSpec {
        priority,
        source: config.client_subnet,
        iif: config.vip_interface.clone(),
        action,
    };
    let rules = BTreeSet::from([
        rule(config.rule_priority, RuleAction::Lookup(config.table)),
        rule(
            config.rule_priority.saturating_add(1),
            RuleAction::Unreachable,
        ),
    ]);
    let vip = (role == Role::Active).then(|| VipSpec {
        interface: config.vip_interface.clone(),
        parent: config.interface.clone(),
        mac: config.vip_mac,
        address: config.vip,
    });
    EgressState {
        nexthops,
        group,
        default_route,
        rules,
        vip,
    }
}

/// One kernel operation. Every change is idempotent when applied on its own
/// (replace, or delete where "not found" counts as done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Change {
    /// `ip nexthop replace id <id> via <gateway> dev <interface>`.
    ReplaceNexthop {
        /// Nexthop id.
        id: u32,
        /// What it points at.
        spec: NexthopSpec,
    },
    /// `ip nexthop replace id <id> group ... type resilient buckets <n>`.
    ReplaceGroup(GroupSpec),
    /// `ip route replace [unreachable] default [nhid <group>] table <table>`.
    ReplaceDefaultRoute {
        /// Table.
        table: u32,
        /// Route.
        route: DefaultRoute,
    },
    /// `ip route del default table <table>`.
    DeleteDefaultRoute {
        /// Table.
        table: u32,
    },
    /// `ip rule add ...` (rules cannot be replaced; added only when missing).
    AddRule(RuleSpec),
    /// `ip rule del ...`.
    DeleteRule(RuleSpec),
    /// Create the VIP macvlan with its address and bring it up (sends a gratuitous ARP).
    CreateVip(VipSpec),
    /// Delete the VIP interface.
    DeleteVip {
        /// Interface name.
        interface: String,
    },
    /// `ip nexthop del id <id>` of the group.
    DeleteGroup {
        /// Group id.
        id: u32,
    },
    /// `ip nexthop del id <id>` of a gateway nexthop.
    DeleteNexthop {
        /// Nexthop id.
        id: u32,
    },
}

/// The ordered changes that take `observed` to `desired` in `table`.
///
/// Order: a VIP to give up first; then nexthops (a group can only name
/// existing nexthops), the group, the route onto it, rules, a VIP to take;
/// removals last and
/// in reverse dependency order (route off the group before the group goes,
/// group before its members). A group whose bucket count must change is
/// deleted and recreated (the kernel cannot resize a resilient group); the
/// kernel drops routes using a deleted nexthop, so the route is then rewritten.
pub fn diff(desired: &EgressState, observed: &EgressState, table: u32) -> Vec<Change> {
    let mut changes = Vec::new();
    // Giving up the VIP comes first and depends on nothing: a router that must
    // stand down does so even if the rest of its state cannot be fixed.
    if let Some(seen) = observed
        .vip
        .as_ref()
        .filter(|seen| desired.vip.as_ref() != Some(*seen))
    {
        changes.push(Change::DeleteVip {
            interface: seen.interface.clone(),
        });
    }
    for (id, spec) in &desired.nexthops {
        if observed.nexthops.get(id) != Some(spec) {
            changes.push(Change::ReplaceNexthop {
                id: *id,
                spec: spec.clone(),
            });
        }
    }
    let mut route_forced = false;
    if let Some(group) = &desired.group {
        match &observed.group {
            Some(seen) if seen == group => {}
            Some(seen) if seen.id != group.id || seen.buckets != group.buckets => {
                changes.push(Change::DeleteGroup { id: seen.id });
                changes.push(Change::ReplaceGroup(group.clone()));
                route_forced = true;
            }
            _ => changes.push(Change::ReplaceGroup(group.clone())),
        }
    }
    match desired.default_route {
        Some(route) if route_forced || observed.default_route != Some(route) => {
            changes.push(Change::ReplaceDefaultRoute { table, route });
        }
        Some(_) => {}
        None if observed.default_route.is_some() => {
            changes.push(Change::DeleteDefaultRoute { table })
        }
        None => {}
    }
    for rule in desired.rules.difference(&observed.rules) {
        changes.push(Change::AddRule(rule.clone()));
    }
    for rule in observed.rules.difference(&desired.rules) {
        changes.push(Change::DeleteRule(rule.clone()));
    }
    if let Some(vip) = &desired.vip
        && observed.vip.as_ref() != Some(vip)
    {
        changes.push(Change::CreateVip(vip.clone()));
    }
    if let Some(seen) = &observed.group {
        let recreated = changes
            .iter()
            .any(|c| matches!(c, Change::DeleteGroup { id } if *id == seen.id));
        if desired.group.as_ref().map(|g| g.id) != Some(seen.id) && !recreated {
            changes.push(Change::DeleteGroup { id: seen.id });
        }
    }
    for id in observed.nexthops.keys() {
        if !desired.nexthops.contains_key(id) {
            changes.push(Change::DeleteNexthop { id: *id });
        }
    }
    changes
}

/// Applies `changes` to a state as the kernel would (used to check that a
/// diff converges; also documents each change's effect).
pub fn apply(state: &mut EgressState, changes: &[Change]) {
    for change in changes {
        match change {
            Change::ReplaceNexthop { id, spec } => {
                state.nexthops.insert(*id, spec.clone());
            }
            Change::ReplaceGroup(group) => state.group = Some(group.clone()),
            Change::ReplaceDefaultRoute { route, .. } => state.default_route = Some(*route),
            Change::DeleteDefaultRoute { .. } => state.default_route = None,
            Change::AddRule(rule) => {
                state.rules.insert(rule.clone());
            }
            Change::DeleteRule(rule) => {
                state.rules.remove(rule);
            }
            Change::CreateVip(vip) => state.vip = Some(vip.clone()),
            Change::DeleteVip { .. } => state.vip = None,
            Change::DeleteGroup { id } | Change::DeleteNexthop { id } => {
                state.nexthops.remove(id);
                if state.group.as_ref().is_some_and(|g| g.id == *id) {
                    state.group = None;
                }
                // The kernel removes routes that use a deleted nexthop.
                if state.default_route == Some(DefaultRoute::ViaGroup(*id)) {
                    state.default_route = None;
                }
                if let Some(group) = &mut state.group {
                    group.members.remove(id);
                    if group.members.is_empty() {
                        let gid = group.id;
                        state.group = None;
                        if state.default_route == Some(DefaultRoute::ViaGroup(gid)) {
                            state.default_route = None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize) -> EgressConfig {
        EgressConfig {
            gateways: (0..n)
                .map(|i| Gateway {
                    name: format!("gw-{i}"),
                    address: Ipv4Addr::new(10, 0, 0, 11 + i as u8),
                })
                .collect(),
            interface: "eth0".into(),
            client_subnet: "10.0.0.0/24".parse().unwrap(),
            vip: "10.0.0.1/24".parse().unwrap(),
            vip_interface: "vpno-vip".into(),
            vip_mac: [2, 0, 0, 0, 0, 1],
            table: 7700,
            rule_priority: 7700,
            nexthop_id_base: 7700,
            buckets: 128,
            idle_timer_secs: 30,
        }
    }

    /// Checks that applying the diff reaches the desired state and that a
    /// second diff is empty (idempotence).
    fn converges(desired: &EgressState, observed: &EgressState) -> Vec<Change> {
        let changes = diff(desired, observed, 7700);
        let mut state = observed.clone();
        apply(&mut state, &changes);
        assert_eq!(&state, desired, "changes {changes:?} do not converge");
        assert!(diff(desired, &state, 7700).is_empty());
        changes
    }

    /// Every group change names only nexthops that exist at that point, and
    /// no route names a missing group.
    fn well_ordered(observed: &EgressState, changes: &[Change]) {
        let mut state = observed.clone();
        for change in changes {
            apply(&mut state, std::slice::from_ref(change));
            if let Some(g) = &state.group {
                for m in &g.members {
                    assert!(
                        state.nexthops.contains_key(m),
                        "group names missing nexthop {m} after {change:?}"
                    );
                }
            }
            if let Some(DefaultRoute::ViaGroup(id)) = state.default_route {
                assert_eq!(
                    state.group.as_ref().map(|g| g.id),
                    Some(id),
                    "route on missing group after {change:?}"
                );
            }
        }
    }

    #[test]
    fn plan_all_healthy_active() {
        let c = config(3);
        let s = plan(&c, |_| true, Role::Active);
        assert_eq!(
            s.nexthops.keys().copied().collect::<Vec<_>>(),
            vec![7712, 7713, 7714]
        );
        assert_eq!(s.nexthops[&7713].gateway, Ipv4Addr::new(10, 0, 0, 12));
        let g = s.group.as_ref().unwrap();
        assert_eq!((g.id, g.buckets), (7700, 128));
        assert_eq!(g.members, BTreeSet::from([7712, 7713, 7714]));
        assert_eq!(s.default_route, Some(DefaultRoute::ViaGroup(7700)));
        let rules: Vec<_> = s.rules.iter().collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (rules[0].priority, rules[0].action, rules[0].iif.as_str()),
            (7700, RuleAction::Lookup(7700), "vpno-vip")
        );
        assert_eq!(
            (rules[1].priority, rules[1].action),
            (7701, RuleAction::Unreachable)
        );
        assert!(rules.iter().all(|r| r.source == c.client_subnet));
        assert_eq!(s.vip.as_ref().unwrap().address, c.vip);
        assert_eq!(s.vip.as_ref().unwrap().parent, "eth0");
    }

    #[test]
    fn plan_partial_health_keeps_every_nexthop_but_groups_only_healthy() {
        let s = plan(&config(3), |i| i != 1, Role::Active);
        assert_eq!(s.nexthops.len(), 3);
        assert_eq!(s.group.unwrap().members, BTreeSet::from([7712, 7714]));
    }

    #[test]
    fn plan_none_healthy_is_unreachable_without_group() {
        let s = plan(&config(3), |_| false, Role::Active);
        assert!(s.group.is_none());
        assert_eq!(s.default_route, Some(DefaultRoute::Unreachable));
        assert_eq!(s.nexthops.len(), 3);
    }

    #[test]
    fn plan_standby_has_routes_but_no_vip() {
        let s = plan(&config(2), |_| true, Role::Standby);
        assert!(s.vip.is_none());
        assert!(s.group.is_some());
        assert_eq!(s.rules.len(), 2);
    }

    #[test]
    fn plan_without_gateways_is_unreachable() {
        let s = plan(&config(0), |_| true, Role::Active);
        assert!(s.nexthops.is_empty() && s.group.is_none());
        assert_eq!(s.default_route, Some(DefaultRoute::Unreachable));
    }

    #[test]
    fn gateway_of_maps_ids_back() {
        let c = config(2);
        assert_eq!(c.gateway_of(7712).unwrap().name, "gw-0");
        assert_eq!(c.gateway_of(7713).unwrap().name, "gw-1");
        assert!(c.gateway_of(7714).is_none());
        assert!(c.gateway_of(7700).is_none());
        assert!(c.gateway_of(5).is_none());
    }

    #[test]
    fn diff_from_empty_creates_in_dependency_order() {
        let desired = plan(&config(2), |_| true, Role::Active);
        let changes = converges(&desired, &EgressState::default());
        well_ordered(&EgressState::default(), &changes);
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| match c {
                Change::ReplaceNexthop { .. } => "nh",
                Change::ReplaceGroup(_) => "group",
                Change::ReplaceDefaultRoute { .. } => "route",
                Change::AddRule(_) => "rule",
                Change::CreateVip(_) => "vip",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["nh", "nh", "group", "route", "rule", "rule", "vip"]);
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let s = plan(&config(3), |i| i > 0, Role::Standby);
        assert!(diff(&s, &s, 7700).is_empty());
    }

    #[test]
    fn losing_a_gateway_only_replaces_the_group() {
        let c = config(3);
        let before = plan(&c, |_| true, Role::Active);
        let after = plan(&c, |i| i != 2, Role::Active);
        let changes = converges(&after, &before);
        assert_eq!(changes.len(), 1);
        match &changes[0] {
            Change::ReplaceGroup(g) => assert_eq!(g.members, BTreeSet::from([7712, 7713])),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn losing_every_gateway_goes_unreachable_before_deleting_the_group() {
        let c = config(2);
        let before = plan(&c, |_| true, Role::Active);
        let after = plan(&c, |_| false, Role::Active);
        let changes = converges(&after, &before);
        well_ordered(&before, &changes);
        assert_eq!(
            changes,
            vec![
                Change::ReplaceDefaultRoute {
                    table: 7700,
                    route: DefaultRoute::Unreachable
                },
                Change::DeleteGroup { id: 7700 },
            ]
        );
    }

    #[test]
    fn first_gateway_back_creates_group_then_route() {
        let c = config(2);
        let before = plan(&c, |_| false, Role::Active);
        let after = plan(&c, |i| i == 0, Role::Active);
        let changes = converges(&after, &before);
        well_ordered(&before, &changes);
        assert!(matches!(changes[0], Change::ReplaceGroup(_)));
        assert_eq!(
            changes[1],
            Change::ReplaceDefaultRoute {
                table: 7700,
                route: DefaultRoute::ViaGroup(7700)
            }
        );
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn role_changes_touch_only_the_vip() {
        let c = config(2);
        let active = plan(&c, |_| true, Role::Active);
        let standby = plan(&c, |_| true, Role::Standby);
        assert_eq!(
            converges(&standby, &active),
            vec![Change::DeleteVip {
                interface: "vpno-vip".into()
            }]
        );
        assert!(matches!(
            converges(&active, &standby)[..],
            [Change::CreateVip(_)]
        ));
    }

    #[test]
    fn a_different_vip_is_recreated() {
        let c = config(1);
        let desired = plan(&c, |_| true, Role::Active);
        let mut observed = desired.clone();
        observed.vip.as_mut().unwrap().address = "10.0.0.9/24".parse().unwrap();
        let changes = converges(&desired, &observed);
        assert!(matches!(
            changes[..],
            [Change::DeleteVip { .. }, Change::CreateVip(_)]
        ));
    }

    #[test]
    fn standing_down_deletes_the_vip_before_anything_else() {
        let c = config(2);
        let observed = plan(&c, |_| true, Role::Active);
        let mut desired = plan(&c, |_| true, Role::Standby);
        desired.nexthops.get_mut(&7712).unwrap().gateway = Ipv4Addr::new(10, 0, 0, 77);
        let changes = converges(&desired, &observed);
        assert!(
            matches!(changes[0], Change::DeleteVip { .. }),
            "{changes:?}"
        );
    }

    #[test]
    fn teardown_removes_everything_in_reverse_order() {
        let observed = plan(&config(3), |_| true, Role::Active);
        let changes = converges(&EgressState::default(), &observed);
        well_ordered(&observed, &changes);
        let pos = |pred: &dyn Fn(&Change) -> bool| changes.iter().position(pred).unwrap();
        let route = pos(&|c| matches!(c, Change::DeleteDefaultRoute { .. }));
        let group = pos(&|c| matches!(c, Change::DeleteGroup { .. }));
        let first_nh = pos(&|c| matches!(c, Change::DeleteNexthop { .. }));
        assert!(route < group && group < first_nh);
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::DeleteNexthop { .. }))
                .count(),
            3
        );
        assert!(changes.iter().any(|c| matches!(c, Change::DeleteRule(_))));
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::DeleteVip { .. }))
        );
    }

    #[test]
    fn changed_gateway_address_is_a_new_nexthop_and_the_old_one_goes() {
        let mut c = config(2);
        let before = plan(&c, |_| true, Role::Active);
        c.gateways[1].address = Ipv4Addr::new(10, 0, 0, 99);
        let after = plan(&c, |_| true, Role::Active);
        let changes = converges(&after, &before);
        well_ordered(&before, &changes);
        assert!(
            matches!(&changes[0], Change::ReplaceNexthop { id: 7800, spec } if spec.gateway == Ipv4Addr::new(10, 0, 0, 99))
        );
        assert!(
            matches!(&changes[1], Change::ReplaceGroup(g) if g.members == BTreeSet::from([7712, 7800]))
        );
        assert_eq!(changes[2..], [Change::DeleteNexthop { id: 7713 }]);
    }

    #[test]
    fn nexthop_ids_do_not_depend_on_order_or_on_other_gateways() {
        let mut c = config(3);
        let ids = |c: &EgressConfig| -> BTreeMap<Ipv4Addr, u32> {
            c.gateways
                .iter()
                .map(|g| (g.address, c.nexthop_id_of(g.address)))
                .collect()
        };
        let all = ids(&c);
        c.gateways.reverse();
        assert_eq!(ids(&c), all, "reordering renumbers nothing");
        c.gateways.retain(|g| g.name != "gw-1");
        let survivors = ids(&c);
        assert_eq!(survivors.len(), 2);
        assert!(
            survivors.iter().all(|(a, id)| all[a] == *id),
            "removal renumbers nothing"
        );
        // Removing the middle gateway changes only the group and its own nexthop.
        let before = plan(&config(3), |_| true, Role::Active);
        let after = plan(&c, |_| true, Role::Active);
        let changes = converges(&after, &before);
        assert_eq!(
            changes,
            [
                Change::ReplaceGroup(GroupSpec {
                    id: 7700,
                    members: BTreeSet::from([7712, 7714]),
                    buckets: 128,
                    idle_timer_secs: 30
                }),
                Change::DeleteNexthop { id: 7713 }
            ]
        );
        // Adding one adds its nexthop and the group member, nothing else.
        c.gateways.push(Gateway {
            name: "gw-new".into(),
            address: Ipv4Addr::new(10, 0, 1, 40),
        });
        let grown = plan(&c, |_| true, Role::Active);
        let changes = converges(&grown, &after);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            matches!(&changes[0], Change::ReplaceNexthop { id, .. } if *id == 7700 + 1 + 256 + 40)
        );
        assert!(matches!(&changes[1], Change::ReplaceGroup(g) if g.members.len() == 3));
    }

    #[test]
    fn fewer_gateways_shrinks_group_before_deleting_nexthops() {
        let before = plan(&config(3), |_| true, Role::Active);
        let after = plan(&config(1), |_| true, Role::Active);
        let changes = converges(&after, &before);
        well_ordered(&before, &changes);
        assert!(matches!(changes[0], Change::ReplaceGroup(_)));
        assert_eq!(
            changes[1..],
            [
                Change::DeleteNexthop { id: 7713 },
                Change::DeleteNexthop { id: 7714 }
            ]
        );
    }

    #[test]
    fn bucket_change_recreates_group_and_rewrites_route() {
        let mut c = config(2);
        let before = plan(&c, |_| true, Role::Active);
        c.buckets = 64;
        let after = plan(&c, |_| true, Role::Active);
        let changes = converges(&after, &before);
        well_ordered(&before, &changes);
        assert!(matches!(
            changes[..],
            [
                Change::DeleteGroup { id: 7700 },
                Change::ReplaceGroup(_),
                Change::ReplaceDefaultRoute { .. }
            ]
        ));
    }

    #[test]
    fn idle_timer_change_replaces_group_in_place() {
        let mut c = config(2);
        let before = plan(&c, |_| true, Role::Active);
        c.idle_timer_secs = 5;
        let changes = converges(&plan(&c, |_| true, Role::Active), &before);
        assert!(matches!(changes[..], [Change::ReplaceGroup(_)]));
    }

    #[test]
    fn stray_rules_are_removed_and_missing_rule_added() {
        let desired = plan(&config(1), |_| true, Role::Standby);
        let mut observed = desired.clone();
        observed.rules.pop_first();
        observed.rules.insert(RuleSpec {
            priority: 7700,
            source: "10.9.0.0/16".parse().unwrap(),
            iif: "vpno-vip".into(),
            action: RuleAction::Lookup(7700),
        });
        let changes = converges(&desired, &observed);
        assert_eq!(changes.len(), 2);
        assert!(
            matches!(&changes[0], Change::AddRule(r) if r.source == "10.0.0.0/24".parse::<Ipv4Net>().unwrap())
        );
        assert!(
            matches!(&changes[1], Change::DeleteRule(r) if r.source == "10.9.0.0/16".parse::<Ipv4Net>().unwrap())
        );
    }

    #[test]
    fn unexpected_route_kind_is_replaced() {
        let desired = plan(&config(1), |_| true, Role::Standby);
        let mut observed = desired.clone();
        observed.default_route = Some(DefaultRoute::Unreachable);
        assert_eq!(
            converges(&desired, &observed),
            vec![Change::ReplaceDefaultRoute {
                table: 7700,
                route: DefaultRoute::ViaGroup(7700)
            }]
        );
    }

    /// Exhaustive: every pair of (health subset, role) states over three
    /// gateways converges in one diff with dependencies respected, including
    /// from a partially torn-down kernel state.
    #[test]
    fn every_transition_converges_and_is_well_ordered() {
        let c = config(3);
        let mut states = vec![EgressState::default()];
        for mask in 0u8..8 {
            for role in [Role::Active, Role::Standby] {
                let s = plan(&c, |i| mask & (1 << i) != 0, role);
                // half-applied variant: no route, no rules
                let mut partial = s.clone();
                partial.default_route = None;
                partial.rules.clear();
                states.push(s);
                states.push(partial);
            }
        }
        for from in &states {
            for mask in 0u8..8 {
                for role in [Role::Active, Role::Standby] {
                    let to = plan(&c, |i| mask & (1 << i) != 0, role);
                    let changes = converges(&to, from);
                    well_ordered(from, &changes);
                }
            }
            let changes = converges(&EgressState::default(), from);
            well_ordered(from, &changes);
        }
    }
}
