//! Pure decisions of the plugin: whether a pod opts in, what an attachment
//! consists of, how the result JSON is extended, and what CHECK finds wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use vpno_net::client::{self, ClientNetwork};

use crate::config::{GatewayRef, PluginConfig};
use crate::membership::Role;
use crate::spec::{CniError, Code};

/// The pod annotation that opts a pod in: `<name>` (a MaskGateway in the
/// pod's namespace) or `<namespace>/<name>`.
pub use vpno_api::names::GATEWAY_ANNOTATION;

/// Metric of the routes via the VIP.
pub const VIA_METRIC: u32 = 100;
/// Metric of the `unreachable` twins; worse than [`VIA_METRIC`], so they
/// only match once the interface (and with it the routes via the VIP) is gone.
pub const UNREACHABLE_METRIC: u32 = 4_000_000_000;

/// Whether a pod in `pod_namespace` with `annotations` opts into `gateway`.
pub fn opts_in(
    annotations: &BTreeMap<String, String>,
    pod_namespace: &str,
    gateway: &GatewayRef,
) -> bool {
    let Some(value) = annotations.get(GATEWAY_ANNOTATION).map(|v| v.trim()) else {
        return false;
    };
    let (namespace, name) = value.split_once('/').unwrap_or((pod_namespace, value));
    namespace == gateway.namespace && name == gateway.name
}

/// The host-side veth name for a container's attachment: `vpno` and ten hex
/// digits of a stable hash of container id and interface, so DEL and the
/// garbage collector find it again without any state.
pub fn host_link_name(container_id: &str, interface: &str) -> String {
    format!(
        "vpno{:010x}",
        fnv1a(&[container_id, "/", interface]) & 0xff_ffff_ffff
    )
}

/// The pod-side MAC of a container's attachment: locally administered
/// unicast (`02:`) and five bytes of a stable hash, so the anti-spoofing
/// entries can be written before the link exists and removed at DEL
/// without any state.
pub fn pod_mac(container_id: &str, interface: &str) -> [u8; 6] {
    let h = fnv1a(&["mac/", container_id, "/", interface]).to_be_bytes();
    [0x02, h[3], h[4], h[5], h[6], h[7]]
}

/// The router index whose layout address `address` is, if any.
fn router_index(network: Ipv4Net, address: Ipv4Addr) -> Option<u32> {
    let layout = vpno_net::layout::GatewayLayout::with_default_slices(network).ok()?;
    (0..vpno_net::layout::MAX_ROUTERS).find(|i| layout.router(*i).ok() == Some(address))
}

/// 64-bit FNV-1a, written out because std's hashers are not stable across
/// releases and the name must stay the same for the lifetime of a node.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One route the plugin keeps in the pod's main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodRoute {
    /// `<prefix> via <vip> dev <interface> metric VIA_METRIC`.
    Via(Ipv4Net),
    /// `unreachable <prefix> metric UNREACHABLE_METRIC`.
    Unreachable(Ipv4Net),
}

/// Everything an attachment puts in place (the address comes from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPlan {
    /// Pod-side interface name.
    pub interface: String,
    /// Host-side veth name.
    pub host_link: String,
    /// Bridge the host side joins.
    pub bridge: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The router VIP.
    pub vip: Ipv4Addr,
    /// The gateway network's prefix length (the pod's address carries it).
    pub prefix_len: u8,
    /// Routes to keep in the pod (none for members).
    pub routes: BTreeSet<PodRoute>,
    /// The pod-side MAC ([`pod_mac`]).
    pub mac: [u8; 6],
    /// `Some` for a member (fixed address, `ip_forward` on, no routes).
    pub role: Option<Role>,
}

/// The destinations the primary plugin routed itself (its connected subnets
/// and non-default routes): they are more specific than ours and win anyway,
/// so they are excluded explicitly to keep our route set exact.
pub fn primary_destinations(prev: Option<&Value>) -> Vec<Ipv4Net> {
    let Some(prev) = prev else { return Vec::new() };
    let ips = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| &ip["address"]);
    let routes = prev["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["dst"]);
    ips.chain(routes)
        .filter_map(|v| v.as_str()?.parse::<Ipv4Net>().ok())
        .filter(|n| n.prefix_len() > 0)
        .map(|n| n.trunc())
        .collect()
}

/// `prev` without this plugin's own entries (our interface in `sandbox`, its
/// addresses, routes via `vip`): what the primary plugins made. CHECK's
/// prevResult is the whole chain's result, ours included.
pub fn without_ours(prev: &Value, interface: &str, sandbox: &str, vip: Ipv4Addr) -> Value {
    let mut out = prev.clone();
    let ours = prev["interfaces"].as_array().and_then(|l| {
        l.iter()
            .position(|i| i["name"] == interface && i["sandbox"] == sandbox)
    });
    if let Some(list) = out["ips"].as_array_mut() {
        list.retain(|ip| ours.is_none() || ip["interface"].as_u64() != ours.map(|i| i as u64));
    }
    if let Some(list) = out["routes"].as_array_mut() {
        list.retain(|r| r["gw"] != vip.to_string().as_str());
    }
    out
}

/// Plans the attachment for `container_id`.
pub fn attach_plan(config: &PluginConfig, container_id: &str) -> Result<AttachPlan, CniError> {
    let mut excludes = config.excludes.clone();
    excludes.extend(primary_destinations(config.prev_result.as_ref()));
    let routes = client::plan(&ClientNetwork {
        network: config.network,
        vip: config.vip,
        excludes,
    })
    .map_err(|e| {
        CniError::new(
            Code::InvalidConfig,
            "cannot plan the pod's routes",
            e.to_string(),
        )
    })?;
    let routes = routes
        .via_vip
        .into_iter()
        .map(PodRoute::Via)
        .chain(routes.unreachable.into_iter().map(PodRoute::Unreachable))
        .collect();
    Ok(AttachPlan {
        interface: config.interface.clone(),
        host_link: host_link_name(container_id, &config.interface),
        bridge: config.bridge.clone(),
        mtu: config.mtu,
        vip: config.vip,
        prefix_len: config.network.prefix_len(),
        routes,
        mac: pod_mac(container_id, &config.interface),
        role: None,
    })
}

/// Plans a member's attachment: on the bridge with its fixed `address`
/// (the caller adds it) — a router at the layout's router `i` address gets
/// the MAC it pins anyway, [`vpno_net::layout::router_mac`]`(i)`, which every
/// node's anti-spoofing lets clients send to —, no routes of ours (its
/// connected route suffices), and forwarding on in its namespace so it
/// routes without any capability.
pub fn member_plan(
    config: &PluginConfig,
    container_id: &str,
    role: Role,
    address: Ipv4Addr,
) -> AttachPlan {
    AttachPlan {
        interface: config.interface.clone(),
        host_link: host_link_name(container_id, &config.interface),
        bridge: config.bridge.clone(),
        mtu: config.mtu,
        vip: config.vip,
        prefix_len: config.network.prefix_len(),
        routes: BTreeSet::new(),
        mac: match role {
            Role::Router => router_index(config.network, address)
                .map(vpno_net::layout::router_mac)
                .unwrap_or_else(|| pod_mac(container_id, &config.interface)),
            Role::Gateway => pod_mac(container_id, &config.interface),
        },
        role: Some(role),
    }
}

/// What the kernel reported back after attaching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Pod-side MAC address (`aa:bb:...`).
    pub mac: String,
    /// The pod's address on the gateway network.
    pub address: Ipv4Net,
    /// The sandbox path (CNI_NETNS).
    pub sandbox: String,
}

/// The result to print after ADD: `prev` (or an empty result) with our
/// interface, address and routes appended; every other field untouched.
pub fn extend_result(
    prev: Option<&Value>,
    version: &str,
    plan: &AttachPlan,
    got: &Attached,
) -> Value {
    let mut result = prev.cloned().unwrap_or_else(|| json!({}));
    if !result.is_object() {
        result = json!({});
    }
    result["cniVersion"] = json!(version);
    let interfaces = array(&mut result, "interfaces");
    interfaces.push(json!({"name": plan.interface, "mac": got.mac, "sandbox": got.sandbox}));
    let index = interfaces.len() - 1;
    let mut ip = json!({"address": got.address.to_string(), "interface": index});
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    array(&mut result, "ips").push(ip);
    let routes = array(&mut result, "routes");
    for r in &plan.routes {
        if let PodRoute::Via(dst) = r {
            routes.push(json!({"dst": dst.to_string(), "gw": plan.vip.to_string()}));
        }
    }
    result
}

fn array<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !v[key].is_array() {
        v[key] = json!([]);
    }
    v[key].as_array_mut().expect("just made an array")
}

/// Our attachment as recorded in a (CHECK's) prevResult: the address given
/// to `interface` in `sandbox`, if the pod was attached at ADD.
pub fn recorded_address(prev: Option<&Value>, interface: &str, sandbox: &str) -> Option<Ipv4Net> {
    let prev = prev?;
    let index = prev["interfaces"]
        .as_array()?
        .iter()
        .position(|i| i["name"] == interface && i["sandbox"] == sandbox)?;
    prev["ips"]
        .as_array()?
        .iter()
        .find(|ip| ip["interface"].as_u64() == Some(index as u64))?["address"]
        .as_str()?
        .parse()
        .ok()
}

/// The kernel and store state CHECK compares with the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Pod interface: (is up, MTU, IPv4 addresses), if it exists.
    pub pod_link: Option<(bool, u32, Vec<Ipv4Net>)>,
    /// Our routes in the pod's main table.
    pub routes: BTreeSet<PodRoute>,
    /// Host veth: (is up, name of its bridge), if it exists.
    pub host_link: Option<(bool, Option<String>)>,
    /// Whether the address store holds `address` for this container.
    pub address_recorded: bool,
}

/// Everything that differs from what ADD left (empty: CHECK passes).
pub fn check(plan: &AttachPlan, address: Ipv4Net, seen: &Observed) -> Vec<String> {
    let mut problems = Vec::new();
    match &seen.pod_link {
        None => problems.push(format!(
            "interface {} is missing in the pod",
            plan.interface
        )),
        Some((up, mtu, addrs)) => {
            if !up {
                problems.push(format!("interface {} is down", plan.interface));
            }
            if *mtu != plan.mtu {
                problems.push(format!(
                    "interface {} has MTU {mtu}, expected {}",
                    plan.interface, plan.mtu
                ));
            }
            if !addrs.contains(&address) {
                problems.push(format!(
                    "interface {} lacks address {address}",
                    plan.interface
                ));
            }
        }
    }
    for r in plan.routes.difference(&seen.routes) {
        problems.push(format!("route {r:?} is missing"));
    }
    for r in seen.routes.difference(&plan.routes) {
        problems.push(format!("unexpected route {r:?}"));
    }
    match &seen.host_link {
        None => problems.push(format!("host interface {} is missing", plan.host_link)),
        Some((up, master)) => {
            if !up {
                problems.push(format!("host interface {} is down", plan.host_link));
            }
            if master.as_deref() != Some(plan.bridge.as_str()) {
                problems.push(format!(
                    "host interface {} is not on bridge {} (on {master:?})",
                    plan.host_link, plan.bridge
                ));
            }
        }
    }
    if plan.role.is_none() && !seen.address_recorded {
        problems.push(format!(
            "address {} is not recorded for this container",
            address.addr()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prev: Option<Value>) -> PluginConfig {
        let mut v = json!({
            "cniVersion": "1.0.0", "name": "net", "type": "vpno-cni",
            "gateway": {"namespace": "vpn", "name": "egress"},
            "network": "192.168.24.0/22", "slice": "192.168.24.64/26", "vip": "192.168.24.1",
            "excludes": ["10.96.0.0/12"], "mtu": 1400, "bridge": "vpno0",
        });
        if let Some(p) = prev {
            v["prevResult"] = p;
        }
        PluginConfig::parse(v.to_string().as_bytes()).unwrap()
    }

    fn bridge_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                           {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "vendorField": {"kept": true}
        })
    }

    fn ann(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(GATEWAY_ANNOTATION.to_string(), v.to_string())])
    }

    #[test]
    fn opt_in_by_name_or_namespace_and_name() {
        let gw = GatewayRef {
            namespace: "vpn".into(),
            name: "egress".into(),
        };
        assert!(opts_in(&ann("egress"), "vpn", &gw));
        assert!(opts_in(&ann("vpn/egress"), "apps", &gw));
        assert!(opts_in(&ann(" vpn/egress "), "apps", &gw));
        assert!(
            !opts_in(&ann("egress"), "apps", &gw),
            "name alone means the pod's namespace"
        );
        assert!(!opts_in(&ann("other/egress"), "vpn", &gw));
        assert!(!opts_in(&ann("vpn/other"), "vpn", &gw));
        assert!(!opts_in(&BTreeMap::new(), "vpn", &gw));
        assert!(!opts_in(&ann(""), "vpn", &gw));
    }

    #[test]
    fn host_link_names_are_stable_distinct_and_short() {
        let a = host_link_name("c1", "vpn0");
        assert_eq!(a, host_link_name("c1", "vpn0"));
        assert_ne!(a, host_link_name("c2", "vpn0"));
        assert_ne!(a, host_link_name("c1", "vpn1"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("vpno") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn pod_macs_are_stable_local_unicast_and_distinct() {
        let a = pod_mac("c1", "vpn0");
        assert_eq!(a, pod_mac("c1", "vpn0"));
        assert_ne!(a, pod_mac("c2", "vpn0"));
        assert_eq!(a[0], 0x02, "locally administered, unicast");
    }

    #[test]
    fn a_member_plan_has_no_routes_and_the_same_link_names() {
        let c = config(None);
        let m = member_plan(&c, "c1", Role::Router, "192.168.24.3".parse().unwrap());
        let client = attach_plan(&c, "c1").unwrap();
        assert!(m.routes.is_empty());
        assert_eq!(m.role, Some(Role::Router));
        assert_eq!(m.host_link, client.host_link);
        assert_eq!(
            m.mac,
            vpno_net::layout::router_mac(1),
            "router 1's pinned MAC"
        );
        let off_layout = member_plan(&c, "c1", Role::Router, "192.168.24.77".parse().unwrap());
        assert_eq!(off_layout.mac, client.mac);
        let g = member_plan(&c, "c1", Role::Gateway, "192.168.24.16".parse().unwrap());
        assert_eq!(g.mac, client.mac);
        assert_eq!(client.role, None);
        // CHECK does not look for a lease of a member.
        let addr: Ipv4Net = "192.168.24.3/22".parse().unwrap();
        let mut seen = healthy(&m, addr);
        seen.address_recorded = false;
        assert!(check(&m, addr, &seen).is_empty());
    }

    #[test]
    fn plan_routes_exclude_primary_destinations_and_pair_every_route() {
        let plan = attach_plan(&config(Some(bridge_result())), "c1").unwrap();
        let via: Vec<Ipv4Net> = plan
            .routes
            .iter()
            .filter_map(|r| match r {
                PodRoute::Via(n) => Some(*n),
                _ => None,
            })
            .collect();
        let unr: Vec<Ipv4Net> = plan
            .routes
            .iter()
            .filter_map(|r| match r {
                PodRoute::Unreachable(n) => Some(*n),
                _ => None,
            })
            .collect();
        let inside = |nets: &[Ipv4Net], a: &str| {
            nets.iter()
                .any(|n| n.contains(&a.parse::<Ipv4Addr>().unwrap()))
        };
        assert!(inside(&via, "198.51.100.1"));
        assert!(
            !inside(&via, "10.244.1.77"),
            "the pod's own subnet stays primary"
        );
        assert!(!inside(&via, "10.96.0.10"));
        assert!(inside(&unr, "192.168.25.1") && !inside(&via, "192.168.25.1"));
        assert_eq!(plan.prefix_len, 22);
        assert_eq!(plan.host_link, host_link_name("c1", "vpn0"));
    }

    #[test]
    fn a_primary_subnet_inside_the_gateway_network_is_refused() {
        let mut prev = bridge_result();
        prev["ips"][0]["address"] = json!("192.168.24.9/24");
        let err = attach_plan(&config(Some(prev)), "c1").unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.details.contains("overlaps"), "{err}");
    }

    #[test]
    fn result_keeps_everything_and_appends_ours() {
        let prev = bridge_result();
        let plan = attach_plan(&config(Some(prev.clone())), "c1").unwrap();
        let got = Attached {
            mac: "02:00:00:00:00:01".into(),
            address: "192.168.24.70/22".parse().unwrap(),
            sandbox: "/run/netns/p".into(),
        };
        let r = extend_result(Some(&prev), "1.0.0", &plan, &got);
        assert_eq!(r["dns"], prev["dns"]);
        assert_eq!(r["vendorField"], prev["vendorField"]);
        assert_eq!(r["interfaces"][0], prev["interfaces"][0]);
        assert_eq!(r["interfaces"][2]["name"], "vpn0");
        assert_eq!(r["ips"][0], prev["ips"][0]);
        assert_eq!(
            r["ips"][1],
            json!({"address": "192.168.24.70/22", "interface": 2})
        );
        assert_eq!(r["routes"][0], prev["routes"][0]);
        assert!(
            r["routes"].as_array().unwrap()[1..]
                .iter()
                .all(|x| x["gw"] == "192.168.24.1")
        );
        assert_eq!(
            recorded_address(Some(&r), "vpn0", "/run/netns/p"),
            Some(got.address)
        );
        assert_eq!(recorded_address(Some(&prev), "vpn0", "/run/netns/p"), None);
        let stripped = without_ours(&r, "vpn0", "/run/netns/p", plan.vip);
        assert_eq!(
            primary_destinations(Some(&stripped)),
            primary_destinations(Some(&prev))
        );
        let mut again = config(Some(r.clone()));
        again.prev_result = Some(stripped);
        assert_eq!(
            attach_plan(&again, "c1").unwrap(),
            plan,
            "CHECK plans what ADD planned"
        );
        let old = extend_result(None, "0.4.0", &plan, &got);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.4.0");
    }

    fn healthy(plan: &AttachPlan, addr: Ipv4Net) -> Observed {
        Observed {
            pod_link: Some((true, plan.mtu, vec![addr])),
            routes: plan.routes.clone(),
            host_link: Some((true, Some(plan.bridge.clone()))),
            address_recorded: true,
        }
    }

    #[test]
    fn check_passes_on_the_planned_state_and_names_each_difference() {
        let plan = attach_plan(&config(None), "c1").unwrap();
        let addr: Ipv4Net = "192.168.24.70/22".parse().unwrap();
        assert!(check(&plan, addr, &healthy(&plan, addr)).is_empty());

        let mut s = healthy(&plan, addr);
        let first = *s.routes.iter().next().unwrap();
        s.routes.remove(&first);
        let p = check(&plan, addr, &s);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("missing"), "{p:?}");

        let mut s = healthy(&plan, addr);
        s.pod_link = Some((true, plan.mtu, vec![]));
        assert!(check(&plan, addr, &s)[0].contains("lacks address"));

        let mut s = healthy(&plan, addr);
        s.host_link = Some((true, None));
        assert!(check(&plan, addr, &s)[0].contains("not on bridge"));

        let s = Observed::default();
        assert_eq!(check(&plan, addr, &s).len(), 3 + plan.routes.len());
    }
}
