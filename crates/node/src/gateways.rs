//! The MaskGateways as the node agent needs them ([`GatewayInfo`], read from
//! the objects by [`gateway_info`]) and the pure decisions over them: the
//! link names and VXLAN network identifier of each gateway network (derived
//! from the object's uid, so every node computes the same ones with no
//! coordination), and which gateway networks this node can serve now
//! ([`serve`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use vpno_api::gateway::{ClientsSpec, MaskGateway};

use crate::plan::GatewaySpec;

/// Prefix of every gateway bridge the agent makes (`vpno-b` + 8 hex digits).
pub const BRIDGE_PREFIX: &str = "vpno-b";
/// Prefix of every VXLAN device the agent makes (`vpno-x` + 8 hex digits).
pub const VXLAN_PREFIX: &str = "vpno-x";

/// One MaskGateway as the agent reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`: names the links, the VNI and the address store.
    pub uid: String,
    /// `metadata.creationTimestamp` (RFC 3339): the older gateway keeps its
    /// VNI when two hash to the same one.
    pub created: String,
    /// `status.network`, once the controller planned it.
    pub network: Option<NetworkInfo>,
    /// `status.nodes`: each node's slice.
    pub slices: BTreeMap<String, Ipv4Net>,
    /// `spec.tunnel.mtu`, used when the status has no MTU yet.
    pub tunnel_mtu: Option<u32>,
    /// `spec.clients`.
    pub clients: Option<ClientsSpec>,
}

/// `status.network` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The network.
    pub cidr: Ipv4Net,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The planned MTU.
    pub mtu: Option<u32>,
    /// What stays on the pods' primary network.
    pub excludes: Vec<Ipv4Net>,
}

/// Reads a MaskGateway; `Err` says what in its status is unusable (the
/// gateway is then left out of this pass, its links untouched).
pub fn gateway_info(gw: &MaskGateway) -> Result<GatewayInfo, String> {
    let meta = &gw.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let bad = |what: String| format!("MaskGateway {namespace}/{name}: {what}");
    let uid = meta.uid.clone().ok_or_else(|| bad("no uid".into()))?;
    let status = gw.status.as_ref();
    let network = match status.and_then(|s| s.network.as_ref()) {
        None => None,
        Some(n) => Some(NetworkInfo {
            cidr: n
                .cidr
                .parse::<Ipv4Net>()
                .map_err(|_| bad(format!("status.network.cidr {:?} is not a CIDR", n.cidr)))?
                .trunc(),
            vip: n
                .vip
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| bad(format!("status.network.vip {:?} is not an address", n.vip)))?,
            mtu: n.mtu,
            excludes: n
                .excludes
                .iter()
                .map(|e| {
                    e.parse::<Ipv4Net>()
                        .map_err(|_| bad(format!("status.network.excludes: {e:?} is not a CIDR")))
                })
                .collect::<Result<_, _>>()?,
        }),
    };
    let slices = status
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            n.slice
                .parse::<Ipv4Net>()
                .map(|s| (n.node.clone(), s))
                .map_err(|_| {
                    bad(format!(
                        "status.nodes: slice {:?} of {} is not a CIDR",
                        n.slice, n.node
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(GatewayInfo {
        namespace,
        name,
        uid,
        created: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        network,
        slices,
        tunnel_mtu: gw.spec.tunnel.mtu,
        clients: gw.spec.clients.clone(),
    })
}

/// 64-bit FNV-1a, stable across builds and machines (std's hashers are not),
/// so every node derives the same names.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bridge of the gateway network with `uid` (14 characters).
pub fn bridge_name(uid: &str) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", fnv1a(uid) as u32)
}

/// The VXLAN device of the gateway network with `uid` (14 characters).
pub fn vxlan_name(uid: &str) -> String {
    format!("{VXLAN_PREFIX}{:08x}", fnv1a(uid) as u32)
}

/// The largest VNI (24 bits).
const MAX_VNI: u32 = 0xff_ffff;

fn hashed_vni(uid: &str) -> u32 {
    (fnv1a(&format!("vni/{uid}")) % u64::from(MAX_VNI)) as u32 + 1
}

/// Each gateway's VNI: a hash of its uid into 1..=2^24-1; when two collide
/// the older gateway (then the smaller uid) keeps it and the other takes the
/// next free one. Every node sees the same gateways, so all agree.
pub fn vnis(gateways: &[GatewayInfo]) -> BTreeMap<String, u32> {
    let mut order: Vec<&GatewayInfo> = gateways.iter().collect();
    order.sort_by(|a, b| (&a.created, &a.uid).cmp(&(&b.created, &b.uid)));
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for gw in order {
        let mut vni = hashed_vni(&gw.uid);
        while !taken.insert(vni) {
            vni = vni % MAX_VNI + 1;
        }
        out.insert(gw.uid.clone(), vni);
    }
    out
}

/// A gateway network this node serves now.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The MaskGateway.
    pub gateway: GatewayInfo,
    /// Its network.
    pub network: NetworkInfo,
    /// What the planner makes of it on this node.
    pub spec: GatewaySpec,
}

/// The gateway networks `node` serves, and for the others why not yet
/// (`namespace/name`, reason).
pub fn serve(
    node: &str,
    port: u16,
    gateways: &[GatewayInfo],
) -> (Vec<Served>, Vec<(String, String)>) {
    let vnis = vnis(gateways);
    let (mut served, mut waiting) = (Vec::new(), Vec::new());
    for gw in gateways {
        let id = format!("{}/{}", gw.namespace, gw.name);
        let Some(network) = gw.network.clone() else {
            waiting.push((
                id,
                "the controller has not planned its network yet (status.network)".into(),
            ));
            continue;
        };
        let Some(slice) = gw.slices.get(node).copied() else {
            waiting.push((id, format!("no slice for node {node} in status.nodes yet")));
            continue;
        };
        if !network.cidr.contains(&slice) {
            waiting.push((
                id,
                format!("slice {slice} is outside the network {}", network.cidr),
            ));
            continue;
        }
        served.push(Served {
            spec: GatewaySpec {
                node: node.to_string(),
                bridge: bridge_name(&gw.uid),
                vxlan: vxlan_name(&gw.uid),
                vni: vnis[&gw.uid],
                port,
                slice,
                tunnel_mtu: network.mtu.or(gw.tunnel_mtu),
            },
            network,
            gateway: gw.clone(),
        });
    }
    (served, waiting)
}

/// Whether `name` is a link the agent makes for some gateway network.
pub fn is_ours(name: &str) -> bool {
    [BRIDGE_PREFIX, VXLAN_PREFIX].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|h| h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpno_api::gateway::{MaskGatewayStatus, NetworkStatus, NodeSlice};

    pub(crate) fn object(name: &str, uid: &str, planned: bool) -> MaskGateway {
        let mut gw = MaskGateway::new(name, Default::default());
        gw.metadata.namespace = Some("vpn".into());
        gw.metadata.uid = Some(uid.into());
        if planned {
            gw.status = Some(MaskGatewayStatus {
                network: Some(NetworkStatus {
                    cidr: "192.168.24.0/22".into(),
                    vip: "192.168.24.1".into(),
                    mtu: Some(1400),
                    excludes: vec!["10.96.0.0/12".into()],
                }),
                nodes: vec![NodeSlice {
                    node: "a".into(),
                    slice: "192.168.24.64/26".into(),
                }],
                ..Default::default()
            });
        }
        gw
    }

    #[test]
    fn reads_network_and_slices_from_the_status() {
        let info = gateway_info(&object("egress", "u1", true)).unwrap();
        let net = info.network.unwrap();
        assert_eq!(net.cidr, "192.168.24.0/22".parse().unwrap());
        assert_eq!(net.vip, "192.168.24.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(net.excludes, vec!["10.96.0.0/12".parse().unwrap()]);
        assert_eq!(info.slices["a"], "192.168.24.64/26".parse().unwrap());
        assert_eq!(
            gateway_info(&object("egress", "u1", false))
                .unwrap()
                .network,
            None
        );
        let mut bad = object("egress", "u1", true);
        bad.status.as_mut().unwrap().nodes[0].slice = "nonsense".into();
        let err = gateway_info(&bad).unwrap_err();
        assert!(
            err.contains("vpn/egress") && err.contains("nonsense"),
            "{err}"
        );
    }

    #[test]
    fn names_are_short_stable_and_ours() {
        let (b, x) = (bridge_name("uid-1"), vxlan_name("uid-1"));
        assert_eq!(b, bridge_name("uid-1"));
        assert_ne!(b, bridge_name("uid-2"));
        assert!(b.len() <= 15 && x.len() <= 15);
        assert!(is_ours(&b) && is_ours(&x));
        assert!(!is_ours("vpno-gw0") && !is_ours("vpno0123456789") && !is_ours("eth0"));
    }

    fn info(uid: &str, created: &str) -> GatewayInfo {
        let mut i = gateway_info(&object(uid, uid, true)).unwrap();
        i.created = created.into();
        i
    }

    #[test]
    fn vnis_are_distinct_and_the_older_gateway_keeps_a_colliding_one() {
        let gws: Vec<GatewayInfo> = (0..200).map(|i| info(&format!("u{i}"), "t")).collect();
        let v = vnis(&gws);
        assert_eq!(v.values().collect::<BTreeSet<_>>().len(), 200);
        assert!(v.values().all(|n| (1..=MAX_VNI).contains(n)));
        // Same inputs, any order: same answer.
        let mut reversed = gws.clone();
        reversed.reverse();
        assert_eq!(vnis(&reversed), v);
        // Two uids whose hashes collide: the older keeps the VNI, the younger takes the next.
        let mut first: BTreeMap<u32, String> = BTreeMap::new();
        let (a, b) = (0..100_000)
            .map(|i| format!("uid-{i}"))
            .find_map(|u| {
                let v = hashed_vni(&u);
                match first.get(&v) {
                    Some(other) => Some((other.clone(), u)),
                    None => {
                        first.insert(v, u);
                        None
                    }
                }
            })
            .expect("a collision among 100000 uids in 2^24 values");
        let old = info(&b, "2026-01-01T00:00:00Z");
        let young = info(&a, "2026-02-01T00:00:00Z");
        let got = vnis(&[young, old]);
        assert_eq!(got[&b], hashed_vni(&b));
        assert_eq!(got[&a], hashed_vni(&a) % MAX_VNI + 1);
    }

    #[test]
    fn only_planned_gateways_with_a_slice_for_this_node_are_served() {
        let gws = vec![
            gateway_info(&object("egress", "u1", true)).unwrap(),
            gateway_info(&object("later", "u2", false)).unwrap(),
        ];
        let (served, waiting) = serve("a", 4789, &gws);
        assert_eq!(served.len(), 1);
        let s = &served[0];
        assert_eq!(s.spec.bridge, bridge_name("u1"));
        assert_eq!(s.spec.slice, "192.168.24.64/26".parse().unwrap());
        assert_eq!(s.spec.tunnel_mtu, Some(1400));
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].0 == "vpn/later" && waiting[0].1.contains("status.network"));
        let (served, waiting) = serve("b", 4789, &gws);
        assert!(served.is_empty());
        assert!(waiting[0].1.contains("no slice for node b"), "{waiting:?}");
    }
}
