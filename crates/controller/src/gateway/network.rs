//! The gateway network as planned from a MaskGateway and the cluster: the
//! fixed member addresses ([`GatewayLayout`]), what stays outside (node pod
//! ranges, the service range, `excludeCidrs`) and each node's slice.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use vpno_api::{MaskGateway, NetworkStatus, NodeSlice};
use vpno_net::layout::GatewayLayout;
use vpno_net::mtu::DEFAULT_TUNNEL_MTU;
use vpno_net::slices::{self, DEFAULT_NETWORK};

/// A Node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<String>,
}

/// Why the network cannot be planned (a condition reason and a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// The planned network.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetworkPlan {
    /// The fixed addresses.
    pub layout: GatewayLayout,
    /// What `status.network` says (`None` while the excludes are not known,
    /// so no client is attached with routes that would swallow the service range).
    pub status: Option<NetworkStatus>,
    /// Each node's slice (the prior ones when no allocation fits).
    pub nodes: Vec<NodeSlice>,
    /// What keeps the network from being complete.
    pub problems: Vec<Problem>,
}

/// Plans the network of `gw` over `nodes` (`None`: Nodes could not be
/// listed): `Err` when its range is unusable.
pub(crate) fn plan(
    gw: &MaskGateway,
    nodes: Option<&[NodeInfo]>,
    discovered_service_cidr: Option<&str>,
) -> Result<NetworkPlan, Problem> {
    let layout = layout_of(gw)?;
    let mut problems = Vec::new();
    let excludes = match excludes(gw, nodes, discovered_service_cidr) {
        Ok(e) => Some(e),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let status = excludes.map(|excludes| NetworkStatus {
        cidr: layout.network().to_string(),
        vip: layout.with_prefix(layout.vip()).to_string(),
        mtu: Some(gw.spec.tunnel.mtu.unwrap_or(DEFAULT_TUNNEL_MTU)),
        excludes,
    });
    let prior = gw
        .status
        .as_ref()
        .map(|s| s.nodes.clone())
        .unwrap_or_default();
    let nodes = match nodes.map(|n| node_slices(&layout, n, &prior)) {
        Some(Ok(n)) => n,
        Some(Err(p)) => {
            problems.push(p);
            prior
        }
        None => {
            problems.push(nodes_unknown());
            prior
        }
    };
    problems.dedup();
    Ok(NetworkPlan {
        layout,
        status,
        nodes,
        problems,
    })
}

/// The layout of the MaskGateway's range (default `192.168.24.0/22`).
pub(crate) fn layout_of(gw: &MaskGateway) -> Result<GatewayLayout, Problem> {
    let text = gw.spec.network.cidr.as_deref().unwrap_or(DEFAULT_NETWORK);
    let invalid = |why: String| Problem {
        reason: "InvalidNetwork",
        message: format!("network.cidr {text}: {why}"),
    };
    let net: Ipv4Net = text
        .parse()
        .map_err(|e: ipnet::AddrParseError| invalid(e.to_string()))?;
    GatewayLayout::with_default_slices(net).map_err(|e| invalid(e.to_string()))
}

/// Node pod ranges (or `network.podCidr` where Nodes carry none), the
/// service range and `excludeCidrs`, normalised, deduplicated, sorted.
fn excludes(
    gw: &MaskGateway,
    nodes: Option<&[NodeInfo]>,
    discovered_service_cidr: Option<&str>,
) -> Result<Vec<String>, Problem> {
    let net = &gw.spec.network;
    if nodes.is_none() && net.pod_cidr.is_none() {
        return Err(nodes_unknown());
    }
    let nodes = nodes.unwrap_or_default();
    let service: Vec<&str> = discovered_service_cidr
        .into_iter()
        .chain(net.service_cidr.as_deref())
        .collect();
    if service.is_empty() {
        return Err(Problem {
            reason: "ServiceCidrUnknown",
            message: "the cluster does not tell its service range (no kube-apiserver Pod or \
                      kubeadm-config in kube-system): set spec.network.serviceCidr"
                .into(),
        });
    }
    let node_ranges = nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter().map(String::as_str));
    let all = node_ranges
        .chain(net.pod_cidr.as_deref())
        .chain(service)
        .chain(net.exclude_cidrs.iter().flatten().map(String::as_str));
    let mut out = BTreeSet::new();
    for text in all {
        // IPv6 pod ranges (dual-stack nodes) do not concern an IPv4 network.
        if text.contains(':') {
            continue;
        }
        let parsed: Ipv4Net = text.trim().parse().map_err(|_| Problem {
            reason: "InvalidExclude",
            message: format!("{text:?} is not an IPv4 CIDR"),
        })?;
        out.insert(parsed.trunc());
    }
    Ok(out.into_iter().map(|n| n.to_string()).collect())
}

fn nodes_unknown() -> Problem {
    Problem {
        reason: "NodesUnknown",
        message: "the controller cannot list Nodes (it needs list and watch on nodes, \
                  cluster-wide): their pod ranges and slices are unknown"
            .into(),
    }
}

/// Slices for every node, keeping each node's prior slice.
fn node_slices(
    layout: &GatewayLayout,
    nodes: &[NodeInfo],
    prior: &[NodeSlice],
) -> Result<Vec<NodeSlice>, Problem> {
    let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let existing: BTreeMap<String, Ipv4Net> = prior
        .iter()
        .filter_map(|s| Some((s.node.clone(), s.slice.parse().ok()?)))
        .collect();
    let allocated = slices::allocate(&layout.slices, &names, &existing).map_err(|e| Problem {
        reason: "SlicesExhausted",
        message: e.to_string(),
    })?;
    Ok(allocated
        .into_iter()
        .map(|(node, slice)| NodeSlice {
            node,
            slice: slice.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpno_api::{MaskGatewaySpec, MaskGatewayStatus, NetworkSpec};

    fn gw(network: NetworkSpec) -> MaskGateway {
        MaskGateway::new(
            "egress",
            MaskGatewaySpec {
                network,
                ..Default::default()
            },
        )
    }

    fn node(name: &str, cidrs: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn excludes_join_node_ranges_the_service_range_and_the_users() {
        let g = gw(NetworkSpec {
            exclude_cidrs: Some(vec!["10.0.0.5/8".into(), "10.244.1.0/24".into()]),
            service_cidr: Some("10.96.0.0/12".into()),
            ..Default::default()
        });
        let nodes = [
            node("a", &["10.244.1.0/24", "fd00:1::/64"]),
            node("b", &["10.244.2.0/24"]),
        ];
        let plan = plan(&g, Some(&nodes), Some("10.96.0.0/12")).unwrap();
        let net = plan.status.unwrap();
        assert_eq!(net.cidr, "192.168.24.0/22");
        assert_eq!(net.vip, "192.168.24.1/22");
        assert_eq!(net.mtu, Some(1420));
        assert_eq!(
            net.excludes,
            [
                "10.0.0.0/8",
                "10.96.0.0/12",
                "10.244.1.0/24",
                "10.244.2.0/24"
            ]
        );
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn an_unknown_service_range_leaves_the_network_unpublished_with_a_reason() {
        let plan = plan(&gw(NetworkSpec::default()), Some(&[node("a", &[])]), None).unwrap();
        assert_eq!(plan.status, None);
        assert_eq!(plan.problems[0].reason, "ServiceCidrUnknown");
        assert!(plan.problems[0].message.contains("serviceCidr"));
        // Slices are still allocated: nodes do not need the excludes.
        assert_eq!(plan.nodes.len(), 1);
        let bad = gw(NetworkSpec {
            service_cidr: Some("10.96.0.0/12".into()),
            exclude_cidrs: Some(vec!["nonsense".into()]),
            ..Default::default()
        });
        let plan = super::plan(&bad, Some(&[]), None).unwrap();
        assert_eq!(plan.problems[0].reason, "InvalidExclude");
    }

    #[test]
    fn slices_are_stable_and_exhaustion_keeps_the_prior_ones() {
        let mut g = gw(NetworkSpec {
            service_cidr: Some("10.96.0.0/12".into()),
            ..Default::default()
        });
        let first = plan(&g, Some(&[node("b", &[]), node("a", &[])]), None)
            .unwrap()
            .nodes;
        assert_eq!(
            first,
            [
                NodeSlice {
                    node: "a".into(),
                    slice: "192.168.24.64/26".into()
                },
                NodeSlice {
                    node: "b".into(),
                    slice: "192.168.24.128/26".into()
                },
            ]
        );
        g.status = Some(MaskGatewayStatus {
            nodes: first.clone(),
            ..Default::default()
        });
        // a goes, c comes: b keeps its slice, c takes the freed lowest one.
        let next = plan(&g, Some(&[node("b", &[]), node("c", &[])]), None)
            .unwrap()
            .nodes;
        assert_eq!(next[0], first[1]);
        assert_eq!(next[1].slice, "192.168.24.64/26");
        // A /24 has three client slices: a fourth node exhausts it.
        g.spec.network.cidr = Some("10.9.0.0/24".into());
        g.status = None;
        let many: Vec<NodeInfo> = (0..4).map(|i| node(&format!("n{i}"), &[])).collect();
        let plan = plan(&g, Some(&many), None).unwrap();
        assert_eq!(plan.problems[0].reason, "SlicesExhausted");
        assert!(plan.nodes.is_empty());
    }

    #[test]
    fn unlisted_nodes_need_the_pod_range_by_hand() {
        let mut g = gw(NetworkSpec {
            service_cidr: Some("10.96.0.0/12".into()),
            ..Default::default()
        });
        let p = plan(&g, None, None).unwrap();
        assert_eq!(p.status, None);
        assert_eq!(p.problems[0].reason, "NodesUnknown");
        g.spec.network.pod_cidr = Some("10.244.0.0/16".into());
        let p = plan(&g, None, None).unwrap();
        assert_eq!(
            p.status.unwrap().excludes,
            ["10.96.0.0/12", "10.244.0.0/16"]
        );
        assert_eq!(p.problems.len(), 1, "slices still unknown");
    }

    #[test]
    fn an_unusable_range_is_invalid_network() {
        let g = gw(NetworkSpec {
            cidr: Some("10.0.0.0/27".into()),
            ..Default::default()
        });
        assert_eq!(
            plan(&g, Some(&[]), None).unwrap_err().reason,
            "InvalidNetwork"
        );
    }
}
