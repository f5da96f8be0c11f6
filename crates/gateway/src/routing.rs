//! Policy routing for forwarded traffic (kernel adapter, rtnetlink).
//!
//! Choice: a dedicated routing table rather than the main table. The main
//! table keeps the gateway's own underlay route to the VPN endpoint (the
//! tunnel's UDP must not go into the tunnel), while
//! - rule `P`:   `from <gateway-network> iif <lan> lookup T`
//! - rule `P+1`: `oif <tunnel> lookup T` (sockets bound to the tunnel, e.g.
//!   the health probe)
//!
//! send forwarded traffic to table `T`, which holds `default dev <tunnel>`
//! (metric 0) and `unreachable default` (a high metric). When the tunnel
//! interface disappears, the kernel removes its route and the unreachable
//! route remains: forwarded traffic is refused by routing even before the
//! nftables kill switch sees it, and never falls through to the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// Metric of the fallback `unreachable default` route in table `T`.
const UNREACHABLE_METRIC: u32 = 4_000_000_000;

/// Errors changing routes and rules.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {message}")]
pub struct RoutingError {
    what: String,
    message: String,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> RoutingError {
    RoutingError {
        what: what.into(),
        message: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

/// The routing state the gateway wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingPlan {
    /// Table `T` for forwarded traffic.
    pub table: u32,
    /// Priority `P` of the first rule (`P+1` for the second).
    pub rule_priority: u32,
    /// Interface facing the gateway network.
    pub lan_interface: String,
    /// The tunnel interface.
    pub tunnel_interface: String,
    /// Source network of forwarded traffic.
    pub gateway_network: IpNet,
}

/// One desired policy rule, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRule {
    /// Rule priority.
    pub priority: u32,
    /// `iif` selector.
    pub iif: Option<String>,
    /// `oif` selector.
    pub oif: Option<String>,
    /// `from` selector.
    pub source: Option<IpNet>,
    /// Table looked up.
    pub table: u32,
}

/// The rules of a plan (pure).
pub fn desired_rules(plan: &RoutingPlan) -> Vec<DesiredRule> {
    vec![
        DesiredRule {
            priority: plan.rule_priority,
            iif: Some(plan.lan_interface.clone()),
            oif: None,
            source: Some(plan.gateway_network.trunc()),
            table: plan.table,
        },
        DesiredRule {
            priority: plan.rule_priority + 1,
            iif: None,
            oif: Some(plan.tunnel_interface.clone()),
            source: None,
            table: plan.table,
        },
    ]
}

/// What an existing kernel rule says, in [`DesiredRule`] terms.
fn observed_rule(message: &RuleMessage) -> DesiredRule {
    let mut rule = DesiredRule {
        priority: 0,
        iif: None,
        oif: None,
        source: None,
        table: u32::from(message.header.table),
    };
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
            RuleAttribute::Oifname(name) => rule.oif = Some(name.clone()),
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Source(ip) => {
                rule.source = IpNet::new(*ip, message.header.src_len).ok();
            }
            _ => {}
        }
    }
    if message.header.action != RuleAction::ToTable {
        // Not a lookup rule: never equal to a desired rule, so it is replaced.
        rule.table = 0;
    }
    rule
}

fn ip_version(net: &IpNet) -> IpVersion {
    match net {
        IpNet::V4(_) => IpVersion::V4,
        IpNet::V6(_) => IpVersion::V6,
    }
}

async fn our_rules(handle: &Handle, plan: &RoutingPlan) -> Result<Vec<RuleMessage>, RoutingError> {
    let wanted = [plan.rule_priority, plan.rule_priority + 1];
    handle
        .rule()
        .get(ip_version(&plan.gateway_network))
        .execute()
        .try_filter(|m| futures::future::ready(wanted.contains(&observed_rule(m).priority)))
        .try_collect()
        .await
        .map_err(|e| err("list rules", e))
}

/// Makes the rules match the plan: removes our-priority rules that differ,
/// adds missing ones. Re-applying an unchanged plan changes nothing.
pub async fn apply_rules(handle: &Handle, plan: &RoutingPlan) -> Result<(), RoutingError> {
    let desired = desired_rules(plan);
    let mut present = Vec::new();
    for message in our_rules(handle, plan).await? {
        let observed = observed_rule(&message);
        if desired.contains(&observed) && !present.contains(&observed) {
            present.push(observed);
        } else {
            handle
                .rule()
                .del(message)
                .execute()
                .await
                .map_err(|e| err("delete stale rule", e))?;
        }
    }
    for rule in desired.iter().filter(|r| !present.contains(r)) {
        let mut request = handle
            .rule()
            .add()
            .action(RuleAction::ToTable)
            .priority(rule.priority)
            .table_id(rule.table);
        if let Some(iif) = &rule.iif {
            request = request.input_interface(iif.clone());
        }
        if let Some(oif) = &rule.oif {
            request = request.output_interface(oif.clone());
        }
        let result = match (plan.gateway_network, rule.source) {
            (IpNet::V4(_), Some(IpNet::V4(src))) => {
                request
                    .v4()
                    .source_prefix(src.addr(), src.prefix_len())
                    .execute()
                    .await
            }
            (IpNet::V6(_), Some(IpNet::V6(src))) => {
                request
                    .v6()
                    .source_prefix(src.addr(), src.prefix_len())
                    .execute()
                    .await
            }
            (IpNet::V4(_), _) => request.v4().execute().await,
            (IpNet::V6(_), _) => request.v6().execute().await,
        };
        match result {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(err(format!("add rule priority {}", rule.priority), e)),
        }
    }
    Ok(())
}

fn default_route(
    plan: &RoutingPlan,
    kind: RouteType,
    oif: Option<u32>,
    metric: u32,
) -> netlink_packet_route::route::RouteMessage {
    let any: IpAddr = match plan.gateway_network {
        IpNet::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpNet::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(any, 0)
        .expect("the unspecified address with prefix 0 is valid")
        .table_id(plan.table)
        .priority(metric)
        .kind(kind);
    if let Some(oif) = oif {
        builder = builder.output_interface(oif);
    }
    builder.build()
}

/// State of a link, for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// Kernel counters.
    pub rx_bytes: u64,
    /// Kernel counters.
    pub tx_bytes: u64,
    /// Kernel counters.
    pub rx_packets: u64,
    /// Kernel counters.
    pub tx_packets: u64,
}

/// Looks up a link by name; `None` when it does not exist.
pub async fn link_state(handle: &Handle, name: &str) -> Result<Option<LinkState>, RoutingError> {
    let result = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    let message = match result {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => return Ok(None),
        Err(e) => return Err(err(format!("look up link {name}"), e)),
    };
    let mut state = LinkState {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    for attribute in &message.attributes {
        if let LinkAttribute::Stats64(stats) = attribute {
            state.rx_bytes = stats.rx_bytes;
            state.tx_bytes = stats.tx_bytes;
            state.rx_packets = stats.rx_packets;
            state.tx_packets = stats.tx_packets;
        }
    }
    Ok(Some(state))
}

/// Ensures table `T` holds `default dev <tunnel>` (when the tunnel exists)
/// and the `unreachable default` fallback. Route replace is idempotent, so
/// this runs on every health tick and repairs routes after a tunnel
/// interface was recreated.
pub async fn apply_routes(
    handle: &Handle,
    plan: &RoutingPlan,
    tunnel_index: Option<u32>,
) -> Result<(), RoutingError> {
    handle
        .route()
        .add(default_route(
            plan,
            RouteType::Unreachable,
            None,
            UNREACHABLE_METRIC,
        ))
        .replace()
        .execute()
        .await
        .map_err(|e| err("add unreachable default", e))?;
    if let Some(index) = tunnel_index {
        handle
            .route()
            .add(default_route(plan, RouteType::Unicast, Some(index), 0))
            .replace()
            .execute()
            .await
            .map_err(|e| err("add default via tunnel", e))?;
    }
    Ok(())
}

/// Removes our rules and routes; keeps going after errors and reports them
/// all at the end.
pub async fn remove(
    handle: &Handle,
    plan: &RoutingPlan,
    tunnel_index: Option<u32>,
) -> Result<(), RoutingError> {
    let mut errors = Vec::new();
    match our_rules(handle, plan).await {
        Ok(rules) => {
            for rule in rules {
                if let Err(e) = handle.rule().del(rule).execute().await {
                    errors.push(format!("delete rule: {e}"));
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let mut routes = vec![default_route(
        plan,
        RouteType::Unreachable,
        None,
        UNREACHABLE_METRIC,
    )];
    if let Some(index) = tunnel_index {
        routes.push(default_route(plan, RouteType::Unicast, Some(index), 0));
    }
    for route in routes {
        match handle.route().del(route).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => {}
            Err(e) => errors.push(format!("delete route: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(err("remove routing state", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_rules_for_a_plan() {
        let plan = RoutingPlan {
            table: 7710,
            rule_priority: 7710,
            lan_interface: "lan0".into(),
            tunnel_interface: "wg-vpno".into(),
            gateway_network: "10.77.0.9/24".parse().unwrap(),
        };
        assert_eq!(
            desired_rules(&plan),
            vec![
                DesiredRule {
                    priority: 7710,
                    iif: Some("lan0".into()),
                    oif: None,
                    source: Some("10.77.0.0/24".parse().unwrap()),
                    table: 7710,
                },
                DesiredRule {
                    priority: 7711,
                    iif: None,
                    oif: Some("wg-vpno".into()),
                    source: None,
                    table: 7710,
                },
            ]
        );
    }
}
