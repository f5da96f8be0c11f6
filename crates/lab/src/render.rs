//! Turns a [`Topology`] into the list of kernel operations that build it.
//! Pure: the operations are data, applied by [`crate::kernel`].

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::plan::{
    BRIDGE_IFACE, ECHO_ADDR, GATEWAY_UPLINK_IFACE, LAN_IFACE, NodeName, PROVIDER_UPLINK_IFACE,
    Topology, WIREGUARD_PORT,
};

/// MTU of the gateway network: leaves room for WireGuard's overhead so the
/// tunnels never need to fragment.
pub const LAN_MTU: u16 = crate::plan::TUNNEL_MTU;
/// nftables table the lab owns in `internet` (leak counters) and in providers (NAT, outages).
pub const LAB_TABLE: &str = "vpno_lab";

/// One kernel operation, always inside one of the lab's namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a network namespace.
    AddNetns {
        /// Node whose namespace this is.
        node: NodeName,
    },
    /// Set a sysctl inside a namespace.
    Sysctl {
        /// Node.
        node: NodeName,
        /// Dotted key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
    /// Create a veth pair directly between two namespaces.
    Veth {
        /// First node.
        a: NodeName,
        /// Interface name in the first node.
        a_iface: String,
        /// Second node.
        b: NodeName,
        /// Interface name in the second node.
        b_iface: String,
    },
    /// Create a bridge.
    Bridge {
        /// Node.
        node: NodeName,
        /// Bridge name.
        iface: String,
    },
    /// Attach an interface to a bridge.
    Enslave {
        /// Node.
        node: NodeName,
        /// Interface.
        iface: String,
        /// Bridge.
        bridge: String,
    },
    /// Set an interface's MTU.
    Mtu {
        /// Node.
        node: NodeName,
        /// Interface.
        iface: String,
        /// MTU.
        mtu: u16,
    },
    /// Bring an interface up.
    Up {
        /// Node.
        node: NodeName,
        /// Interface.
        iface: String,
    },
    /// Add an address.
    Addr {
        /// Node.
        node: NodeName,
        /// Interface.
        iface: String,
        /// Address with prefix.
        addr: Ipv4Net,
    },
    /// Add a route.
    Route {
        /// Node.
        node: NodeName,
        /// Destination.
        dest: Ipv4Net,
        /// Next hop.
        via: Ipv4Addr,
    },
    /// Replace the connected route of a link so that packets the node
    /// originates towards it carry `src`.
    LinkRoute {
        /// Node.
        node: NodeName,
        /// Destination (the link's subnet).
        dest: Ipv4Net,
        /// Interface.
        iface: String,
        /// Preferred source address.
        src: Ipv4Addr,
    },
    /// Load an nftables script (one atomic batch).
    Nft {
        /// Node.
        node: NodeName,
        /// Script in `nft -f` syntax.
        script: String,
    },
}

fn sysctl(node: NodeName, key: &str, value: &str) -> Op {
    Op::Sysctl {
        node,
        key: key.into(),
        value: value.into(),
    }
}

fn up(node: NodeName, iface: &str) -> Op {
    Op::Up {
        node,
        iface: iface.into(),
    }
}

fn addr(node: NodeName, iface: &str, a: Ipv4Addr, prefix: u8) -> Op {
    Op::Addr {
        node,
        iface: iface.into(),
        addr: Ipv4Net::new(a, prefix).expect("prefix <= 32"),
    }
}

/// Every operation that builds the lab's network, in order. Processes are
/// started afterwards (see [`crate::lab`]).
pub fn build_ops(t: &Topology) -> Vec<Op> {
    let mut ops: Vec<Op> = t
        .nodes()
        .into_iter()
        .map(|node| Op::AddNetns { node })
        .collect();
    for node in t.nodes() {
        ops.push(up(node, "lo"));
        // Kernel defaults in a fresh namespace are not the host's; be explicit.
        ops.push(sysctl(node, "net.ipv4.conf.all.rp_filter", "0"));
        ops.push(sysctl(node, "net.ipv4.conf.default.rp_filter", "0"));
        ops.push(sysctl(node, "net.ipv6.conf.all.disable_ipv6", "1"));
        ops.push(sysctl(node, "net.ipv6.conf.default.disable_ipv6", "1"));
        let forwards = matches!(
            node,
            NodeName::Internet | NodeName::Provider(_) | NodeName::Gateway(_) | NodeName::Router(_)
        );
        if forwards {
            ops.push(sysctl(node, "net.ipv4.ip_forward", "1"));
        }
        if matches!(node, NodeName::Router(_)) {
            // The router forwards out of the interface packets came in on; a
            // redirect would teach clients to skip it.
            ops.push(sysctl(node, "net.ipv4.conf.all.send_redirects", "0"));
            ops.push(sysctl(node, "net.ipv4.conf.default.send_redirects", "0"));
        }
        if matches!(node, NodeName::Client(_)) {
            ops.push(sysctl(node, "net.ipv4.conf.all.accept_redirects", "0"));
            ops.push(sysctl(node, "net.ipv4.conf.default.accept_redirects", "0"));
        }
    }
    ops.push(Op::Bridge {
        node: NodeName::Lan,
        iface: BRIDGE_IFACE.into(),
    });
    ops.push(Op::Mtu {
        node: NodeName::Lan,
        iface: BRIDGE_IFACE.into(),
        mtu: LAN_MTU,
    });
    for l in t.links() {
        ops.push(Op::Veth {
            a: l.a,
            a_iface: l.a_iface.clone(),
            b: l.b,
            b_iface: l.b_iface.clone(),
        });
        if l.a == NodeName::Lan {
            ops.push(Op::Mtu {
                node: l.a,
                iface: l.a_iface.clone(),
                mtu: LAN_MTU,
            });
            ops.push(Op::Mtu {
                node: l.b,
                iface: l.b_iface.clone(),
                mtu: LAN_MTU,
            });
            ops.push(Op::Enslave {
                node: l.a,
                iface: l.a_iface.clone(),
                bridge: BRIDGE_IFACE.into(),
            });
        }
        ops.push(up(l.a, &l.a_iface));
        ops.push(up(l.b, &l.b_iface));
    }
    ops.push(up(NodeName::Lan, BRIDGE_IFACE));

    // internet: the service address on lo, one /26 link per provider.
    ops.push(addr(NodeName::Internet, "lo", ECHO_ADDR, 32));
    for p in &t.providers {
        let node = NodeName::Provider(p.index);
        ops.push(addr(
            NodeName::Internet,
            &node.to_string(),
            p.internet_side,
            26,
        ));
        ops.push(addr(node, PROVIDER_UPLINK_IFACE, p.endpoint, 26));
        for g in p.peers.iter().filter_map(|i| t.gateway(*i)) {
            ops.push(addr(node, PROVIDER_UPLINK_IFACE, g.public_ip, 32));
            let iface = NodeName::Gateway(g.index).to_string();
            ops.push(addr(node, &iface, g.uplink_provider_side, 30));
            // The WireGuard server's socket listens on all addresses; its
            // answers must come from the endpoint address the gateway
            // dialled, or the client follows them to an address its kill
            // switch does not allow.
            ops.push(Op::LinkRoute {
                node,
                dest: g.uplink_subnet,
                iface,
                src: p.endpoint,
            });
        }
        ops.push(Op::Route {
            node,
            dest: default_net(),
            via: p.internet_side,
        });
        ops.push(Op::Nft {
            node,
            script: provider_nft(t, p.index),
        });
    }
    ops.push(Op::Nft {
        node: NodeName::Internet,
        script: internet_nft(t),
    });
    for g in &t.gateways {
        let node = NodeName::Gateway(g.index);
        ops.push(addr(node, GATEWAY_UPLINK_IFACE, g.uplink_addr, 30));
        ops.push(addr(node, LAN_IFACE, g.lan_addr, t.lan_subnet.prefix_len()));
        ops.push(Op::Route {
            node,
            dest: default_net(),
            via: g.uplink_provider_side,
        });
    }
    for r in &t.routers {
        let node = NodeName::Router(r.index);
        ops.push(addr(node, LAN_IFACE, r.lan_addr, t.lan_subnet.prefix_len()));
        ops.push(sysctl(
            node,
            &format!("net.ipv4.conf.{LAN_IFACE}.send_redirects"),
            "0",
        ));
    }
    for c in &t.clients {
        let node = NodeName::Client(c.index);
        ops.push(addr(node, LAN_IFACE, c.lan_addr, t.lan_subnet.prefix_len()));
        ops.push(Op::Route {
            node,
            dest: default_net(),
            via: t.vip,
        });
    }
    ops
}

fn default_net() -> Ipv4Net {
    Ipv4Net::default()
}

/// A provider's NAT: each peer's tunnel address leaves through its own public
/// address; traffic from gateways' uplinks is forwarded unchanged (so a leak
/// would show its true source in `internet`). Chain `outage` holds the drops
/// `lab kill gateway-I` adds.
pub fn provider_nft(t: &Topology, provider: u32) -> String {
    let mut snat = String::new();
    if let Some(p) = t.provider(provider) {
        for g in p.peers.iter().filter_map(|i| t.gateway(*i)) {
            snat.push_str(&format!(
                "    ip saddr {} oifname \"{PROVIDER_UPLINK_IFACE}\" snat to {}\n",
                g.tunnel_addr, g.public_ip
            ));
        }
    }
    format!(
        "table ip {LAB_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{snat}  }}\n  chain outage {{\n    type filter hook prerouting priority raw; policy accept;\n  }}\n}}\n"
    )
}

/// The rule `lab kill gateway-I` adds at the gateway's provider: its
/// WireGuard packets are dropped, as if the provider's server stopped
/// answering it.
pub fn outage_rule(t: &Topology, gateway: u32) -> Option<String> {
    let g = t.gateway(gateway)?;
    Some(format!(
        "add rule ip {LAB_TABLE} outage ip saddr {} udp dport {WIREGUARD_PORT} drop\n",
        g.uplink_addr
    ))
}

/// Counters in `internet` for packets whose source must never appear there
/// (the gateway network, gateways' uplinks), hooked before anything else.
pub fn internet_nft(t: &Topology) -> String {
    let sources = t
        .leak_sources()
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {LAB_TABLE} {{\n  counter leaked {{ }}\n  counter seen {{ }}\n  chain watch {{\n    type filter hook prerouting priority -400; policy accept;\n    counter name seen\n    ip saddr {{ {sources} }} counter name leaked\n  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_topology as topology;

    #[test]
    fn namespaces_come_first_and_every_node_gets_one() {
        let t = topology();
        let ops = build_ops(&t);
        let n = t.nodes().len();
        assert!(ops[..n].iter().all(|o| matches!(o, Op::AddNetns { .. })));
        assert!(!ops[n..].iter().any(|o| matches!(o, Op::AddNetns { .. })));
    }

    #[test]
    fn clients_route_via_the_vip_and_gateways_via_their_provider() {
        let t = topology();
        let ops = build_ops(&t);
        for c in &t.clients {
            assert!(ops.contains(&Op::Route {
                node: NodeName::Client(c.index),
                dest: default_net(),
                via: t.vip
            }));
        }
        for g in &t.gateways {
            assert!(ops.contains(&Op::Route {
                node: NodeName::Gateway(g.index),
                dest: default_net(),
                via: g.uplink_provider_side
            }));
        }
        // Routers get no default route from the lab: the router agent owns it.
        assert!(!ops.iter().any(|o| matches!(
            o,
            Op::Route {
                node: NodeName::Router(_),
                ..
            }
        )));
    }

    #[test]
    fn every_veth_is_brought_up_on_both_sides_and_lan_ports_are_bridged() {
        let t = topology();
        let ops = build_ops(&t);
        for l in t.links() {
            assert!(ops.contains(&Op::Up {
                node: l.a,
                iface: l.a_iface.clone()
            }));
            assert!(ops.contains(&Op::Up {
                node: l.b,
                iface: l.b_iface.clone()
            }));
            if l.a == NodeName::Lan {
                assert!(ops.contains(&Op::Enslave {
                    node: l.a,
                    iface: l.a_iface.clone(),
                    bridge: BRIDGE_IFACE.into()
                }));
            }
        }
    }

    #[test]
    fn providers_answer_gateways_from_their_endpoint_address() {
        let t = topology();
        let ops = build_ops(&t);
        for g in &t.gateways {
            let p = t.provider(g.provider).unwrap();
            let node = NodeName::Provider(p.index);
            let iface = NodeName::Gateway(g.index).to_string();
            let route = ops
                .iter()
                .position(|o| {
                    *o == Op::LinkRoute {
                        node,
                        dest: g.uplink_subnet,
                        iface: iface.clone(),
                        src: p.endpoint,
                    }
                })
                .expect("source route");
            let address = ops
                .iter()
                .position(|o| matches!(o, Op::Addr { node: n, iface: i, .. } if *n == node && *i == iface))
                .expect("address");
            assert!(
                address < route,
                "the route replaces the connected route, so it comes after the address"
            );
        }
    }

    #[test]
    fn provider_nat_maps_each_peer_to_its_public_ip() {
        let t = topology();
        let nft = provider_nft(&t, 1);
        for g in t.gateways.iter().filter(|g| g.provider == 1) {
            assert!(nft.contains(&format!(
                "ip saddr {} oifname \"inet\" snat to {}",
                g.tunnel_addr, g.public_ip
            )));
        }
        for g in t.gateways.iter().filter(|g| g.provider != 1) {
            assert!(!nft.contains(&g.public_ip.to_string()));
        }
    }

    #[test]
    fn outage_rule_targets_the_gateway_uplink() {
        let t = topology();
        let rule = outage_rule(&t, 3).unwrap();
        assert!(rule.contains(&t.gateway(3).unwrap().uplink_addr.to_string()));
        assert!(rule.contains("51820") && rule.contains("drop"));
        assert_eq!(outage_rule(&t, 9), None);
    }

    #[test]
    fn leak_watch_counts_lan_and_uplink_sources() {
        let t = topology();
        let nft = internet_nft(&t);
        assert!(nft.contains("10.99.0.0/24"));
        for g in &t.gateways {
            assert!(nft.contains(&format!("{}/32", g.uplink_addr)));
        }
    }
}
