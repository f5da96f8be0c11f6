//! Pure planning of one node's share of the gateway network: what the
//! bridge, the VXLAN device and its FDB should be ([`plan`]), and the kernel
//! operations that turn what is there into that ([`diff`]); links of
//! gateway networks that are gone are deleted by name (`Op::DeleteLink`).
//!
//! One VXLAN device per node, not one per peer: every remote node is an
//! all-zero-MAC FDB entry (head-end replication of broadcast, unknown unicast
//! and multicast), and the device learns which remote holds which MAC. A
//! node joining or leaving is one FDB entry, never a link or bridge-port
//! change, and the bridge sees a single port for the whole overlay.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use vpno_net::mtu::{self, MtuError, Underlay};

/// A cluster node as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Node object's name.
    pub name: String,
    /// Its first IPv4 `InternalIP` (none: it takes no part in the overlay).
    pub address: Option<Ipv4Addr>,
}

/// One gateway network as this node serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// This node's name.
    pub node: String,
    /// The bridge's name.
    pub bridge: String,
    /// The VXLAN device's name.
    pub vxlan: String,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN UDP port.
    pub port: u16,
    /// This node's slice of the network (allocated by the controller).
    pub slice: Ipv4Net,
    /// The tunnel MTU to use when the underlay allows it (default 1420).
    pub tunnel_mtu: Option<u32>,
}

/// The VXLAN device as the agent wants (or finds) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    /// VNI.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local (source) underlay address: this node's InternalIP.
    pub local: Ipv4Addr,
}

/// This node's desired gateway-network state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Bridge name.
    pub bridge: String,
    /// VXLAN device name.
    pub vxlan: String,
    /// VXLAN parameters.
    pub params: VxlanParams,
    /// MTU of bridge and VXLAN device (and of client pods).
    pub mtu: u32,
    /// Why `mtu` is below the tunnel's, when it is.
    pub mtu_reduced: Option<String>,
    /// Underlay addresses of every other node (one FDB entry each).
    pub remotes: BTreeSet<Ipv4Addr>,
    /// This node's slice of the gateway network.
    pub slice: Ipv4Net,
    /// Nodes left out of the overlay for want of an IPv4 InternalIP.
    pub skipped: Vec<String>,
}

/// A link as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Name of its bridge, if enslaved.
    pub master: Option<String>,
}

/// The VXLAN device as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanState {
    /// The link part.
    pub link: LinkState,
    /// Its parameters (None: not a VXLAN device, or unreadable ones).
    pub params: Option<VxlanParams>,
    /// Distinct remote addresses of its FDB entries (static or learned).
    pub remotes: BTreeSet<Ipv4Addr>,
}

/// What the agent found on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The bridge.
    pub bridge: Option<LinkState>,
    /// The VXLAN device.
    pub vxlan: Option<VxlanState>,
}

/// One kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the bridge with this MTU, up.
    CreateBridge {
        /// Name.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// Create the VXLAN device (learning on), enslave it, bring it up.
    CreateVxlan {
        /// Name.
        name: String,
        /// Parameters.
        params: VxlanParams,
        /// MTU.
        mtu: u32,
        /// The bridge it joins.
        master: String,
    },
    /// Delete a link (missing is fine).
    DeleteLink(String),
    /// Set a link's MTU.
    SetMtu {
        /// Link.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// Enslave a link to a bridge.
    SetMaster {
        /// Link.
        name: String,
        /// Bridge.
        master: String,
    },
    /// Bring a link up.
    SetUp(String),
    /// Add the all-zero-MAC FDB entry towards a remote node.
    AddRemote {
        /// VXLAN device.
        vxlan: String,
        /// Remote underlay address.
        remote: Ipv4Addr,
    },
    /// Delete every FDB entry (static or learned) towards a remote node.
    DeleteRemote {
        /// VXLAN device.
        vxlan: String,
        /// Remote underlay address.
        remote: Ipv4Addr,
    },
}

/// Why this node's state cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// This node is not among the Node objects.
    #[error("node {0:?} is not in the cluster's Node list")]
    UnknownNode(String),
    /// This node has no IPv4 InternalIP to run VXLAN from.
    #[error("node {0:?} has no IPv4 InternalIP address for the VXLAN underlay")]
    NoAddress(String),
    /// No usable MTU.
    #[error(transparent)]
    Mtu(#[from] MtuError),
}

/// This node's underlay address: its InternalIP.
pub fn local_address(spec: &GatewaySpec, nodes: &[NodeInfo]) -> Result<Ipv4Addr, PlanError> {
    nodes
        .iter()
        .find(|n| n.name == spec.node)
        .ok_or_else(|| PlanError::UnknownNode(spec.node.clone()))?
        .address
        .ok_or_else(|| PlanError::NoAddress(spec.node.clone()))
}

/// The desired state of this node for one gateway network, from every node
/// of the cluster and the MTU of the underlay interface holding this node's
/// InternalIP.
pub fn plan(
    spec: &GatewaySpec,
    nodes: &[NodeInfo],
    underlay_mtu: u32,
) -> Result<Desired, PlanError> {
    let local = local_address(spec, nodes)?;
    let mtu = mtu::plan(spec.tunnel_mtu, underlay_mtu, Underlay::V4)?;
    let others = nodes.iter().filter(|n| n.name != spec.node);
    Ok(Desired {
        bridge: spec.bridge.clone(),
        vxlan: spec.vxlan.clone(),
        params: VxlanParams {
            vni: spec.vni,
            port: spec.port,
            local,
        },
        mtu: mtu.mtu,
        mtu_reduced: mtu.reduced,
        remotes: others
            .clone()
            .filter_map(|n| n.address)
            .filter(|a| *a != local)
            .collect(),
        slice: spec.slice,
        skipped: others
            .filter(|n| n.address.is_none())
            .map(|n| n.name.clone())
            .collect(),
    })
}

/// The operations from `observed` to `desired`, in order: bridge first,
/// then the VXLAN device (recreated when its VNI, port or local address
/// differ — the kernel cannot change those), then its FDB.
pub fn diff(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = bridge_ops(desired, observed.bridge.as_ref());
    let (mut vxlan, have) = vxlan_ops(desired, observed.vxlan.as_ref());
    ops.append(&mut vxlan);
    for remote in desired.remotes.difference(&have) {
        ops.push(Op::AddRemote {
            vxlan: desired.vxlan.clone(),
            remote: *remote,
        });
    }
    for remote in have.difference(&desired.remotes) {
        ops.push(Op::DeleteRemote {
            vxlan: desired.vxlan.clone(),
            remote: *remote,
        });
    }
    ops
}

fn bridge_ops(desired: &Desired, found: Option<&LinkState>) -> Vec<Op> {
    let name = &desired.bridge;
    let Some(found) = found else {
        return vec![Op::CreateBridge {
            name: name.clone(),
            mtu: desired.mtu,
        }];
    };
    let mut ops = Vec::new();
    if found.mtu != desired.mtu {
        ops.push(Op::SetMtu {
            name: name.clone(),
            mtu: desired.mtu,
        });
    }
    if !found.up {
        ops.push(Op::SetUp(name.clone()));
    }
    ops
}

/// The VXLAN device's operations and the remotes it will still have after them.
fn vxlan_ops(desired: &Desired, found: Option<&VxlanState>) -> (Vec<Op>, BTreeSet<Ipv4Addr>) {
    let name = &desired.vxlan;
    let create = Op::CreateVxlan {
        name: name.clone(),
        params: desired.params.clone(),
        mtu: desired.mtu,
        master: desired.bridge.clone(),
    };
    let Some(found) = found else {
        return (vec![create], BTreeSet::new());
    };
    if found.params.as_ref() != Some(&desired.params) {
        return (vec![Op::DeleteLink(name.clone()), create], BTreeSet::new());
    }
    let mut ops = Vec::new();
    if found.link.mtu != desired.mtu {
        ops.push(Op::SetMtu {
            name: name.clone(),
            mtu: desired.mtu,
        });
    }
    if found.link.master.as_deref() != Some(desired.bridge.as_str()) {
        ops.push(Op::SetMaster {
            name: name.clone(),
            master: desired.bridge.clone(),
        });
    }
    if !found.link.up {
        ops.push(Op::SetUp(name.clone()));
    }
    (ops, found.remotes.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GatewaySpec {
        GatewaySpec {
            node: "a".into(),
            bridge: "vpno-gw0".into(),
            vxlan: "vpno-vx0".into(),
            vni: 4242,
            port: 4789,
            slice: "192.168.24.64/26".parse().unwrap(),
            tunnel_mtu: None,
        }
    }

    fn node(name: &str, addr: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: addr.map(|a| a.parse().unwrap()),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn three() -> Vec<NodeInfo> {
        vec![
            node("a", Some("192.0.2.1")),
            node("b", Some("192.0.2.2")),
            node("c", Some("192.0.2.3")),
        ]
    }

    /// The kernel state `desired` leaves behind.
    fn applied(d: &Desired) -> Observed {
        let link = LinkState {
            mtu: d.mtu,
            up: true,
            master: None,
        };
        Observed {
            bridge: Some(link.clone()),
            vxlan: Some(VxlanState {
                link: LinkState {
                    master: Some(d.bridge.clone()),
                    ..link
                },
                params: Some(d.params.clone()),
                remotes: d.remotes.clone(),
            }),
        }
    }

    #[test]
    fn plan_names_every_other_node_as_remote_and_takes_this_nodes_slice() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        assert_eq!(d.params.local, ip("192.0.2.1"));
        assert_eq!(d.remotes, [ip("192.0.2.2"), ip("192.0.2.3")].into());
        assert_eq!(d.slice, "192.168.24.64/26".parse().unwrap());
        assert_eq!((d.mtu, d.mtu_reduced), (1420, None));
    }

    #[test]
    fn nodes_without_an_address_are_skipped_and_named() {
        let mut nodes = three();
        nodes[2].address = None;
        let d = plan(&spec(), &nodes, 1500).unwrap();
        assert_eq!(d.remotes, [ip("192.0.2.2")].into());
        assert_eq!(d.skipped, vec!["c".to_string()]);
    }

    #[test]
    fn a_small_underlay_reduces_the_mtu_with_a_reason() {
        let d = plan(&spec(), &three(), 1450).unwrap();
        assert_eq!(d.mtu, 1400);
        assert!(d.mtu_reduced.unwrap().contains("1450"));
        assert!(matches!(
            plan(&spec(), &three(), 600),
            Err(PlanError::Mtu(_))
        ));
    }

    #[test]
    fn unknown_or_addressless_self_is_an_error() {
        let mut s = spec();
        s.node = "zz".into();
        assert_eq!(
            plan(&s, &three(), 1500),
            Err(PlanError::UnknownNode("zz".into()))
        );
        let mut nodes = three();
        nodes[0].address = None;
        assert_eq!(
            plan(&spec(), &nodes, 1500),
            Err(PlanError::NoAddress("a".into()))
        );
    }

    #[test]
    fn from_nothing_creates_bridge_then_vxlan_then_remotes() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        let ops = diff(&d, &Observed::default());
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(matches!(&ops[0], Op::CreateBridge { mtu: 1420, .. }));
        assert!(matches!(&ops[1], Op::CreateVxlan { master, .. } if master == "vpno-gw0"));
        assert_eq!(
            ops[2..],
            [
                Op::AddRemote {
                    vxlan: "vpno-vx0".into(),
                    remote: ip("192.0.2.2")
                },
                Op::AddRemote {
                    vxlan: "vpno-vx0".into(),
                    remote: ip("192.0.2.3")
                },
            ]
        );
    }

    #[test]
    fn applied_state_needs_nothing() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        assert_eq!(diff(&d, &applied(&d)), vec![]);
    }

    #[test]
    fn a_node_leaving_deletes_only_its_remote() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        let before = applied(&d);
        let d2 = plan(&spec(), &three()[..2], 1500).unwrap();
        assert_eq!(
            diff(&d2, &before),
            vec![Op::DeleteRemote {
                vxlan: "vpno-vx0".into(),
                remote: ip("192.0.2.3")
            }]
        );
    }

    #[test]
    fn changed_vni_recreates_the_vxlan_device_and_its_remotes() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        let mut observed = applied(&d);
        if let Some(v) = observed.vxlan.as_mut() {
            v.params.as_mut().unwrap().vni = 1;
        }
        let ops = diff(&d, &observed);
        assert_eq!(ops[0], Op::DeleteLink("vpno-vx0".into()));
        assert!(matches!(&ops[1], Op::CreateVxlan { params, .. } if params.vni == 4242));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddRemote { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn drifted_mtu_master_and_state_are_repaired_in_place() {
        let d = plan(&spec(), &three(), 1500).unwrap();
        let mut observed = applied(&d);
        observed.bridge.as_mut().unwrap().up = false;
        let v = observed.vxlan.as_mut().unwrap();
        v.link.mtu = 1500;
        v.link.master = None;
        assert_eq!(
            diff(&d, &observed),
            vec![
                Op::SetUp("vpno-gw0".into()),
                Op::SetMtu {
                    name: "vpno-vx0".into(),
                    mtu: 1420
                },
                Op::SetMaster {
                    name: "vpno-vx0".into(),
                    master: "vpno-gw0".into()
                },
            ]
        );
    }
}
