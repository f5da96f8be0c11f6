//! Pure topology planning: which nodes a lab has, which links join them, which
//! addresses and WireGuard peers they get. No I/O; everything the kernel module
//! applies is decided here and unit-tested.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Prefix shared by every network namespace a lab creates.
pub const NETNS_PREFIX: &str = "vpno-";
/// Address of the echo service, TCP sink and iperf3 server in `internet`.
pub const ECHO_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
/// HTTP port of the echo service (answers with the caller's IP as text).
pub const ECHO_PORT: u16 = 80;
/// TCP port of the byte-counting sink.
pub const SINK_PORT: u16 = 9000;
/// TCP port of the iperf3 server the benchmark starts.
pub const IPERF_PORT: u16 = 5201;
/// UDP port every provider's WireGuard server listens on.
pub const WIREGUARD_PORT: u16 = 51820;
/// Port of the gateway agent's HTTP endpoint (`/healthz`, `/readyz`, `/public-ip`, `/metrics`).
pub const GATEWAY_HTTP_PORT: u16 = 9090;
/// Port of the router agent's HTTP endpoint.
pub const ROUTER_HTTP_PORT: u16 = 9095;
/// MTU of the WireGuard tunnels (1500 minus WireGuard's 80 bytes of overhead).
pub const TUNNEL_MTU: u16 = 1420;
/// Name of the interface joining a node to the gateway network bridge.
pub const LAN_IFACE: &str = "lan";
/// Name of the bridge in the `lan` namespace.
pub const BRIDGE_IFACE: &str = "br0";
/// Name of a provider's interface towards `internet`.
pub const PROVIDER_UPLINK_IFACE: &str = "inet";
/// Name of a gateway's uplink (its "node network") towards its provider.
pub const GATEWAY_UPLINK_IFACE: &str = "wan";
/// Name of the TUN device of a provider's WireGuard server.
pub const PROVIDER_TUNNEL_IFACE: &str = "wg0";

/// Upper bounds on node counts, given by the address plan.
pub const MAX_PROVIDERS: u32 = 8;
/// At most this many gateways (10.99.0.11 ..= 10.99.0.90).
pub const MAX_GATEWAYS: u32 = 80;
/// At most this many routers: one active, one standby (the router agent
/// pairs with exactly one peer).
pub const MAX_ROUTERS: u32 = 2;
/// At most this many clients (10.99.0.101 ..= 10.99.0.250).
pub const MAX_CLIENTS: u32 = 150;
/// At most this many gateways on one provider (exit addresses per /26 block).
pub const MAX_PEERS_PER_PROVIDER: u32 = 50;

/// Why a lab cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The lab name is unusable as part of namespace names.
    #[error(
        "invalid lab name {0:?}: use 1-20 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'"
    )]
    InvalidName(String),
    /// A node count is out of range.
    #[error("{what} must be between {min} and {max}, got {got}")]
    Count {
        /// Which count.
        what: &'static str,
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
        /// The value given.
        got: u32,
    },
    /// A node name is not one of the lab's node names.
    #[error(
        "unknown node {0:?}: expected internet, lan, provider-K, gateway-I, router-J or client-C"
    )]
    UnknownNode(String),
    /// The WireGuard keys handed to the planner do not match the counts.
    #[error("need {needed} key pairs, got {got}")]
    Keys {
        /// Key pairs needed.
        needed: usize,
        /// Key pairs given.
        got: usize,
    },
}

/// A lab's name: prefixes its namespaces (`vpno-<name>-gateway-1`) and state dir.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The real network namespace name of `node` in this lab.
    pub fn netns(&self, node: &NodeName) -> String {
        format!("{NETNS_PREFIX}{}-{node}", self.0)
    }

    /// Whether `netns` is a namespace of this lab (and not of another lab whose
    /// name merely starts with this one), and which node it is.
    pub fn node_of_netns(&self, netns: &str) -> Option<NodeName> {
        let rest = netns
            .strip_prefix(NETNS_PREFIX)?
            .strip_prefix(&self.0)?
            .strip_prefix('-')?;
        rest.parse().ok()
    }
}

impl FromStr for LabName {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let ok = (1..=20).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && !s.contains("--")
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(LabName(s.to_string()))
        } else {
            Err(PlanError::InvalidName(s.to_string()))
        }
    }
}

impl TryFrom<String> for LabName {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, PlanError> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node of a lab, by role and 1-based index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NodeName {
    /// The simulated internet: echo service, TCP sink.
    Internet,
    /// The namespace holding the gateway network's bridge.
    Lan,
    /// A VPN provider: WireGuard server with NAT to public addresses.
    Provider(u32),
    /// A gateway: WireGuard client of one provider, runs `vpn-operator gateway`.
    Gateway(u32),
    /// A router: runs `vpn-operator router`, may own the VIP.
    Router(u32),
    /// A client on the gateway network, default route via the VIP.
    Client(u32),
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeName::Internet => f.write_str("internet"),
            NodeName::Lan => f.write_str("lan"),
            NodeName::Provider(k) => write!(f, "provider-{k}"),
            NodeName::Gateway(i) => write!(f, "gateway-{i}"),
            NodeName::Router(j) => write!(f, "router-{j}"),
            NodeName::Client(c) => write!(f, "client-{c}"),
        }
    }
}

impl FromStr for NodeName {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let unknown = || PlanError::UnknownNode(s.to_string());
        match s {
            "internet" => return Ok(NodeName::Internet),
            "lan" => return Ok(NodeName::Lan),
            _ => {}
        }
        let (role, index) = s.rsplit_once('-').ok_or_else(unknown)?;
        if index.starts_with('0') || index.starts_with('+') {
            return Err(unknown());
        }
        let index: u32 = index.parse().map_err(|_| unknown())?;
        if index == 0 {
            return Err(unknown());
        }
        match role {
            "provider" => Ok(NodeName::Provider(index)),
            "gateway" => Ok(NodeName::Gateway(index)),
            "router" => Ok(NodeName::Router(index)),
            "client" => Ok(NodeName::Client(index)),
            _ => Err(unknown()),
        }
    }
}

impl TryFrom<String> for NodeName {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, PlanError> {
        s.parse()
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.to_string()
    }
}

/// What the user asked for: a name and node counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// The lab's name.
    pub name: LabName,
    /// Number of VPN providers (gateways are spread over them round-robin).
    pub providers: u32,
    /// Number of gateways.
    pub gateways: u32,
    /// Number of routers (the first becomes active, the others standby).
    pub routers: u32,
    /// Number of clients.
    pub clients: u32,
}

impl LabSpec {
    /// Checks the counts against the address plan.
    pub fn validate(&self) -> Result<(), PlanError> {
        let check = |what, got: u32, min, max| {
            if (min..=max).contains(&got) {
                Ok(())
            } else {
                Err(PlanError::Count {
                    what,
                    min,
                    max,
                    got,
                })
            }
        };
        check("providers", self.providers, 1, MAX_PROVIDERS)?;
        check("gateways", self.gateways, 1, MAX_GATEWAYS)?;
        check("routers", self.routers, 1, MAX_ROUTERS)?;
        check("clients", self.clients, 1, MAX_CLIENTS)?;
        let per_provider = self.gateways.div_ceil(self.providers);
        check(
            "gateways per provider",
            per_provider,
            1,
            MAX_PEERS_PER_PROVIDER,
        )?;
        Ok(())
    }
}

/// A WireGuard key pair in base64 (the `wg genkey` / `wg pubkey` forms).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// Private key, base64.
    pub private: String,
    /// Public key, base64.
    pub public: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The complete plan of a lab: every node, link, address and peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// What was asked for.
    pub spec: LabSpec,
    /// The gateway network (clients, routers and gateways share it).
    pub lan_subnet: Ipv4Net,
    /// The address routers share; clients route through it.
    pub vip: Ipv4Addr,
    /// The providers.
    pub providers: Vec<ProviderPlan>,
    /// The gateways.
    pub gateways: Vec<GatewayPlan>,
    /// The routers.
    pub routers: Vec<RouterPlan>,
    /// The clients.
    pub clients: Vec<ClientPlan>,
}

/// One VPN provider: a WireGuard server and NAT to public addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderPlan {
    /// 1-based index.
    pub index: u32,
    /// The /26 of public addresses this provider owns.
    pub public_block: Ipv4Net,
    /// Address of `internet` on the link to this provider.
    pub internet_side: Ipv4Addr,
    /// The provider's own public address: the WireGuard endpoint.
    pub endpoint: Ipv4Addr,
    /// The provider's tunnel network.
    pub tunnel_subnet: Ipv4Net,
    /// The server's address inside the tunnel network.
    pub tunnel_addr: Ipv4Addr,
    /// The server's key pair.
    pub keys: KeyPair,
    /// The gateways (peers) of this provider, by gateway index.
    pub peers: Vec<u32>,
}

/// One gateway: a WireGuard client of one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPlan {
    /// 1-based index.
    pub index: u32,
    /// Index of its provider.
    pub provider: u32,
    /// Address on the gateway network.
    pub lan_addr: Ipv4Addr,
    /// The /30 of its uplink to the provider.
    pub uplink_subnet: Ipv4Net,
    /// The provider's side of the uplink (the gateway's default gateway).
    pub uplink_provider_side: Ipv4Addr,
    /// The gateway's side of the uplink: its non-tunnel address.
    pub uplink_addr: Ipv4Addr,
    /// The gateway's address inside the provider's tunnel network.
    pub tunnel_addr: Ipv4Addr,
    /// The public address the provider NATs this gateway's traffic to.
    pub public_ip: Ipv4Addr,
    /// The gateway's key pair.
    pub keys: KeyPair,
}

/// One router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    /// 1-based index.
    pub index: u32,
    /// Address on the gateway network (besides the VIP, when active).
    pub lan_addr: Ipv4Addr,
    /// Priority for the VIP election: higher wins.
    pub priority: u32,
}

/// One client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPlan {
    /// 1-based index.
    pub index: u32,
    /// Address on the gateway network.
    pub lan_addr: Ipv4Addr,
}

/// The public /24s providers take /26 blocks from, alternating.
const PUBLIC_RANGES: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 0),
    Ipv4Addr::new(198, 51, 100, 0),
];

fn offset(base: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + by)
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    // Prefixes here are constants below 32.
    Ipv4Net::new(addr, prefix).expect("valid prefix").trunc()
}

/// Plans a lab. `keys` holds one key pair per provider followed by one per
/// gateway (see [`keys_needed`]).
pub fn plan(spec: &LabSpec, keys: &[KeyPair]) -> Result<Topology, PlanError> {
    spec.validate()?;
    let needed = keys_needed(spec);
    if keys.len() != needed {
        return Err(PlanError::Keys {
            needed,
            got: keys.len(),
        });
    }
    let (provider_keys, gateway_keys) = keys.split_at(spec.providers as usize);
    let lan_base = Ipv4Addr::new(10, 99, 0, 0);

    let mut gateways = Vec::new();
    let mut peers_of: Vec<Vec<u32>> = vec![Vec::new(); spec.providers as usize];
    for i in 1..=spec.gateways {
        let provider = (i - 1) % spec.providers + 1;
        let peer_slot = peers_of[(provider - 1) as usize].len() as u32;
        peers_of[(provider - 1) as usize].push(i);
        let block = provider_block(provider);
        let uplink_base = Ipv4Addr::new(100, 64, (i / 64) as u8, ((i % 64) * 4) as u8);
        gateways.push(GatewayPlan {
            index: i,
            provider,
            lan_addr: offset(lan_base, 10 + i),
            uplink_subnet: net(uplink_base, 30),
            uplink_provider_side: offset(uplink_base, 1),
            uplink_addr: offset(uplink_base, 2),
            tunnel_addr: offset(provider_tunnel_base(provider), 10 + peer_slot),
            public_ip: offset(block.network(), 10 + peer_slot),
            keys: gateway_keys[(i - 1) as usize].clone(),
        });
    }
    let providers = (1..=spec.providers)
        .map(|k| {
            let block = provider_block(k);
            let tunnel_base = provider_tunnel_base(k);
            ProviderPlan {
                index: k,
                public_block: block,
                internet_side: offset(block.network(), 1),
                endpoint: offset(block.network(), 2),
                tunnel_subnet: net(tunnel_base, 24),
                tunnel_addr: offset(tunnel_base, 1),
                keys: provider_keys[(k - 1) as usize].clone(),
                peers: peers_of[(k - 1) as usize].clone(),
            }
        })
        .collect();
    let routers = (1..=spec.routers)
        .map(|j| RouterPlan {
            index: j,
            lan_addr: offset(lan_base, 1 + j),
            priority: 100 + spec.routers - j,
        })
        .collect();
    let clients = (1..=spec.clients)
        .map(|c| ClientPlan {
            index: c,
            lan_addr: offset(lan_base, 100 + c),
        })
        .collect();
    Ok(Topology {
        spec: spec.clone(),
        lan_subnet: net(lan_base, 24),
        vip: offset(lan_base, 1),
        providers,
        gateways,
        routers,
        clients,
    })
}

/// How many key pairs [`plan`] needs: providers first, then gateways.
pub fn keys_needed(spec: &LabSpec) -> usize {
    (spec.providers + spec.gateways) as usize
}

fn provider_block(k: u32) -> Ipv4Net {
    let range = PUBLIC_RANGES[((k - 1) % 2) as usize];
    net(offset(range, 64 * ((k - 1) / 2)), 26)
}

fn provider_tunnel_base(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (100 + k) as u8, 0, 0)
}

/// Which kind of link joins two namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethLink {
    /// First namespace's node.
    pub a: NodeName,
    /// Interface name in `a`.
    pub a_iface: String,
    /// Second namespace's node.
    pub b: NodeName,
    /// Interface name in `b`.
    pub b_iface: String,
}

impl Topology {
    /// Every node, in the order namespaces are created.
    pub fn nodes(&self) -> Vec<NodeName> {
        let mut nodes = vec![NodeName::Internet, NodeName::Lan];
        nodes.extend(self.providers.iter().map(|p| NodeName::Provider(p.index)));
        nodes.extend(self.gateways.iter().map(|g| NodeName::Gateway(g.index)));
        nodes.extend(self.routers.iter().map(|r| NodeName::Router(r.index)));
        nodes.extend(self.clients.iter().map(|c| NodeName::Client(c.index)));
        nodes
    }

    /// Every veth pair. Nothing links to the host's namespace.
    pub fn links(&self) -> Vec<VethLink> {
        let mut links = Vec::new();
        for p in &self.providers {
            links.push(VethLink {
                a: NodeName::Internet,
                a_iface: NodeName::Provider(p.index).to_string(),
                b: NodeName::Provider(p.index),
                b_iface: PROVIDER_UPLINK_IFACE.into(),
            });
        }
        for g in &self.gateways {
            links.push(VethLink {
                a: NodeName::Provider(g.provider),
                a_iface: NodeName::Gateway(g.index).to_string(),
                b: NodeName::Gateway(g.index),
                b_iface: GATEWAY_UPLINK_IFACE.into(),
            });
        }
        let lan_members = self
            .gateways
            .iter()
            .map(|g| NodeName::Gateway(g.index))
            .chain(self.routers.iter().map(|r| NodeName::Router(r.index)))
            .chain(self.clients.iter().map(|c| NodeName::Client(c.index)));
        for node in lan_members {
            links.push(VethLink {
                a: NodeName::Lan,
                a_iface: node.to_string(),
                b: node,
                b_iface: LAN_IFACE.into(),
            });
        }
        links
    }

    /// The gateway with this index.
    pub fn gateway(&self, index: u32) -> Option<&GatewayPlan> {
        self.gateways.iter().find(|g| g.index == index)
    }

    /// The provider with this index.
    pub fn provider(&self, index: u32) -> Option<&ProviderPlan> {
        self.providers.iter().find(|p| p.index == index)
    }

    /// The router with this index.
    pub fn router(&self, index: u32) -> Option<&RouterPlan> {
        self.routers.iter().find(|r| r.index == index)
    }

    /// Whether `node` exists in this lab.
    pub fn has_node(&self, node: &NodeName) -> bool {
        self.nodes().contains(node)
    }

    /// The URL of the echo service, as clients use it.
    pub fn echo_url(&self) -> String {
        format!("http://{ECHO_ADDR}/")
    }

    /// The gateway whose traffic the provider NATs to `ip`, if any.
    pub fn gateway_by_public_ip(&self, ip: Ipv4Addr) -> Option<u32> {
        self.gateways
            .iter()
            .find(|g| g.public_ip == ip)
            .map(|g| g.index)
    }

    /// Addresses that must never appear as a source in `internet`: the
    /// gateway network and every gateway's non-tunnel (uplink) address.
    pub fn leak_sources(&self) -> Vec<Ipv4Net> {
        let mut nets = vec![self.lan_subnet];
        nets.extend(self.gateways.iter().map(|g| Ipv4Net::from(g.uplink_addr)));
        nets
    }
}

/// The default-sized topology (2 providers, 4 gateways, 2 routers, 2 clients)
/// with placeholder keys, shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) fn test_topology() -> Topology {
    let spec = LabSpec {
        name: "t".parse().unwrap(),
        providers: 2,
        gateways: 4,
        routers: 2,
        clients: 2,
    };
    let keys: Vec<KeyPair> = (0..keys_needed(&spec))
        .map(|i| KeyPair {
            private: format!("k{i}"),
            public: format!("p{i}"),
        })
        .collect();
    plan(&spec, &keys).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn keys(n: usize) -> Vec<KeyPair> {
        (0..n)
            .map(|i| KeyPair {
                private: format!("priv{i}"),
                public: format!("pub{i}"),
            })
            .collect()
    }

    fn spec(providers: u32, gateways: u32, routers: u32, clients: u32) -> LabSpec {
        LabSpec {
            name: "t".parse().unwrap(),
            providers,
            gateways,
            routers,
            clients,
        }
    }

    fn default_topology() -> Topology {
        let s = spec(2, 4, 2, 2);
        plan(&s, &keys(keys_needed(&s))).unwrap()
    }

    #[test]
    fn lab_names_are_validated() {
        for ok in ["lab", "t1", "my-lab-2"] {
            assert!(ok.parse::<LabName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Lab",
            "1lab",
            "lab-",
            "a--b",
            "lab_x",
            "abcdefghijklmnopqrstu",
            "a/b",
        ] {
            assert!(bad.parse::<LabName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_round_trip_and_reject_garbage() {
        for n in [
            NodeName::Internet,
            NodeName::Lan,
            NodeName::Provider(2),
            NodeName::Gateway(12),
            NodeName::Router(1),
            NodeName::Client(3),
        ] {
            assert_eq!(n.to_string().parse::<NodeName>().unwrap(), n);
        }
        for bad in [
            "gateway",
            "gateway-0",
            "gateway-01",
            "gateway-x",
            "host-1",
            "gateway-+1",
            "2-internet",
        ] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn netns_names_do_not_match_other_labs_with_longer_names() {
        let lab: LabName = "lab".parse().unwrap();
        assert_eq!(lab.netns(&NodeName::Gateway(1)), "vpno-lab-gateway-1");
        assert_eq!(
            lab.node_of_netns("vpno-lab-gateway-1"),
            Some(NodeName::Gateway(1))
        );
        assert_eq!(lab.node_of_netns("vpno-lab-2-gateway-1"), None);
        assert_eq!(lab.node_of_netns("vpno-labx-internet"), None);
        assert_eq!(lab.node_of_netns("other"), None);
    }

    #[test]
    fn gateways_spread_round_robin_with_distinct_public_ips() {
        let t = default_topology();
        assert_eq!(
            t.gateways.iter().map(|g| g.provider).collect::<Vec<_>>(),
            vec![1, 2, 1, 2]
        );
        assert_eq!(t.providers[0].peers, vec![1, 3]);
        let ips: HashSet<_> = t.gateways.iter().map(|g| g.public_ip).collect();
        assert_eq!(ips.len(), 4);
        for g in &t.gateways {
            let p = t.provider(g.provider).unwrap();
            assert!(p.public_block.contains(&g.public_ip));
            assert!(p.tunnel_subnet.contains(&g.tunnel_addr));
            assert_ne!(g.public_ip, p.endpoint);
            assert!(
                g.uplink_subnet.contains(&g.uplink_addr)
                    && g.uplink_subnet.contains(&g.uplink_provider_side)
            );
            assert_eq!(t.gateway_by_public_ip(g.public_ip), Some(g.index));
        }
    }

    #[test]
    fn public_addresses_are_documentation_ranges_only() {
        let s = spec(8, 80, 2, 150);
        let t = plan(&s, &keys(keys_needed(&s))).unwrap();
        let doc: [Ipv4Net; 3] = [
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        ];
        let is_doc = |a: &Ipv4Addr| doc.iter().any(|n| n.contains(a));
        assert!(is_doc(&ECHO_ADDR));
        for p in &t.providers {
            assert!(is_doc(&p.endpoint) && is_doc(&p.internet_side));
        }
        for g in &t.gateways {
            assert!(is_doc(&g.public_ip));
        }
        // Blocks never overlap.
        let blocks: HashSet<_> = t.providers.iter().map(|p| p.public_block).collect();
        assert_eq!(blocks.len(), 8);
    }

    #[test]
    fn every_lan_address_is_unique_and_inside_the_subnet() {
        let s = spec(8, 80, 2, 150);
        let t = plan(&s, &keys(keys_needed(&s))).unwrap();
        let mut seen = HashSet::new();
        assert!(seen.insert(t.vip));
        let all = t
            .gateways
            .iter()
            .map(|g| g.lan_addr)
            .chain(t.routers.iter().map(|r| r.lan_addr))
            .chain(t.clients.iter().map(|c| c.lan_addr));
        for a in all {
            assert!(t.lan_subnet.contains(&a), "{a}");
            assert!(seen.insert(a), "duplicate {a}");
            assert_ne!(a, t.lan_subnet.network());
            assert_ne!(a, t.lan_subnet.broadcast());
        }
        let uplinks: HashSet<_> = t.gateways.iter().map(|g| g.uplink_subnet).collect();
        assert_eq!(uplinks.len(), 80);
    }

    #[test]
    fn counts_out_of_range_are_rejected() {
        for s in [
            spec(0, 1, 1, 1),
            spec(1, 0, 1, 1),
            spec(1, 1, 0, 1),
            spec(9, 9, 1, 1),
            spec(1, 51, 1, 1),
            spec(1, 1, 3, 1),
        ] {
            assert!(plan(&s, &keys(keys_needed(&s))).is_err(), "{s:?}");
        }
        let s = spec(2, 4, 2, 2);
        assert_eq!(
            plan(&s, &keys(3)),
            Err(PlanError::Keys { needed: 6, got: 3 })
        );
    }

    #[test]
    fn links_join_every_node_and_never_the_host() {
        let t = default_topology();
        let links = t.links();
        // 2 provider uplinks, 4 gateway uplinks, 8 lan members.
        assert_eq!(links.len(), 2 + 4 + 8);
        let nodes: HashSet<_> = t.nodes().into_iter().collect();
        for l in &links {
            assert!(nodes.contains(&l.a) && nodes.contains(&l.b));
            assert!(l.a_iface.len() <= 15 && l.b_iface.len() <= 15);
        }
        for n in t.nodes() {
            assert!(links.iter().any(|l| l.a == n || l.b == n), "{n} unlinked");
        }
        // Each gateway's uplink goes to its own provider.
        for g in &t.gateways {
            assert!(links.iter().any(
                |l| l.a == NodeName::Provider(g.provider) && l.b == NodeName::Gateway(g.index)
            ));
        }
    }

    #[test]
    fn first_router_has_the_highest_priority() {
        let t = default_topology();
        assert!(t.routers[0].priority > t.routers[1].priority);
    }

    #[test]
    fn leak_sources_cover_lan_and_uplinks() {
        let t = default_topology();
        let leaks = t.leak_sources();
        assert!(leaks.iter().any(|n| n.contains(&t.clients[0].lan_addr)));
        for g in &t.gateways {
            assert!(leaks.iter().any(|n| n.contains(&g.uplink_addr)));
            assert!(!leaks.iter().any(|n| n.contains(&g.public_ip)));
        }
    }
}
