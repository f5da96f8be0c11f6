//! What `lab status` shows: gateway health, public IP, flows and bytes; the
//! active router and its nexthops; recent client egress addresses; leaks.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;

use crate::kernel;
use crate::plan::{GATEWAY_HTTP_PORT, LabName, NodeName, Topology};
use crate::render::LAB_TABLE;
use crate::state::{self, LabState};
use crate::{LabError, daemons, lab, traffic};

/// One gateway's row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatewayStatus {
    /// Node name.
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// Address on the gateway network (the routers' nexthop).
    pub lan_addr: Ipv4Addr,
    /// Whether the agent process runs.
    pub running: bool,
    /// Whether `/readyz` answers 200 (the tunnel passes traffic).
    pub healthy: bool,
    /// What `/public-ip` reports.
    pub public_ip: Option<String>,
    /// Active flows from `/metrics`.
    pub flows: Option<u64>,
    /// Bytes through the tunnel (both directions) from `/metrics`.
    pub bytes: Option<u64>,
    /// Whether `lab kill` cut it off at its provider.
    pub outage: bool,
}

/// One router's row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouterStatus {
    /// Node name.
    pub name: String,
    /// Own address on the gateway network.
    pub lan_addr: Ipv4Addr,
    /// Whether the agent process runs.
    pub running: bool,
    /// Whether it holds the VIP.
    pub active: bool,
    /// Gateways in its nexthop group, by node name.
    pub nexthops: Vec<String>,
}

/// One request the echo service saw.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Egress {
    /// Unix time in milliseconds.
    pub at_ms: u128,
    /// Source address the echo service saw.
    pub ip: String,
    /// The gateway that address belongs to, if any.
    pub gateway: Option<String>,
}

/// Everything `status` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusReport {
    /// Lab name.
    pub name: String,
    /// URL of the echo service, as clients use it.
    pub echo_url: String,
    /// The VIP clients route through.
    pub vip: Ipv4Addr,
    /// Gateways.
    pub gateways: Vec<GatewayStatus>,
    /// Routers.
    pub routers: Vec<RouterStatus>,
    /// The router holding the VIP, if exactly one does.
    pub active_router: Option<String>,
    /// Clients, with their addresses.
    pub clients: Vec<(String, Ipv4Addr)>,
    /// The last requests the echo service saw.
    pub recent_egress: Vec<Egress>,
    /// Packets `internet` received from the gateway network or gateways'
    /// uplinks since `up` (must stay 0).
    pub leaked_packets: Option<u64>,
}

impl StatusReport {
    /// What keeps the lab from being fully healthy, in words; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for g in self.gateways.iter().filter(|g| !g.outage) {
            if !g.running {
                problems.push(format!("{} agent is not running", g.name));
            } else if !g.healthy {
                problems.push(format!("{} is not healthy", g.name));
            }
        }
        for r in self.routers.iter().filter(|r| !r.running) {
            problems.push(format!("{} agent is not running", r.name));
        }
        match &self.active_router {
            None => problems.push("no router holds the VIP".into()),
            Some(active) => {
                let healthy: Vec<&String> = self
                    .gateways
                    .iter()
                    .filter(|g| g.healthy)
                    .map(|g| &g.name)
                    .collect();
                let hops = self
                    .routers
                    .iter()
                    .find(|r| &r.name == active)
                    .map(|r| r.nexthops.iter().collect::<Vec<_>>());
                if hops.as_ref() != Some(&healthy) {
                    problems.push(format!(
                        "{active} routes via {hops:?}, healthy gateways are {healthy:?}"
                    ));
                }
            }
        }
        if let Some(n) = self.leaked_packets
            && n > 0
        {
            problems.push(format!("{n} packets leaked into internet"));
        }
        problems
    }

    /// The table `status` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab {}   echo: {}   VIP: {}",
            self.name, self.echo_url, self.vip
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<11} {:<11} {:<12} {:<9} {:<16} {:>6} {:>12}",
            "GATEWAY", "PROVIDER", "LAN", "HEALTH", "PUBLIC IP", "FLOWS", "BYTES"
        );
        for g in &self.gateways {
            let health = match (g.running, g.outage, g.healthy) {
                (false, _, _) => "stopped",
                (_, true, true) => "outage?",
                (_, true, false) => "outage",
                (_, false, true) => "healthy",
                (_, false, false) => "down",
            };
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<11} {:<11} {:<12} {:<9} {:<16} {:>6} {:>12}",
                g.name,
                g.provider,
                g.lan_addr.to_string(),
                health,
                g.public_ip.as_deref().unwrap_or("-"),
                opt(g.flows),
                opt(g.bytes)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<11} {:<12} {:<8} NEXTHOPS", "ROUTER", "LAN", "ROLE");
        for r in &self.routers {
            let role = match (r.running, r.active) {
                (false, true) => "dead+VIP",
                (false, false) => "dead",
                (true, true) => "active",
                (true, false) => "standby",
            };
            let hops = if r.nexthops.is_empty() {
                "-".to_string()
            } else {
                r.nexthops.join(", ")
            };
            let _ = writeln!(
                s,
                "{:<11} {:<12} {:<8} {}",
                r.name,
                r.lan_addr.to_string(),
                role,
                hops
            );
        }
        let _ = writeln!(s);
        let recent: Vec<String> = self
            .recent_egress
            .iter()
            .rev()
            .take(8)
            .map(|e| match &e.gateway {
                Some(g) => format!("{} ({g})", e.ip),
                None => format!("{} (NOT via a gateway)", e.ip),
            })
            .collect();
        let _ = writeln!(
            s,
            "recent egress: {}",
            if recent.is_empty() {
                "-".to_string()
            } else {
                recent.join(", ")
            }
        );
        let leaks = self
            .leaked_packets
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(s, "packets leaked into internet: {leaks}");
        s
    }
}

async fn gateway_status(t: &Topology, state: &LabState, i: u32, outage: bool) -> GatewayStatus {
    let g = t.gateway(i).expect("gateway index from the topology");
    let node = NodeName::Gateway(i);
    let ns = t.spec.name.netns(&node);
    let running = state
        .pids
        .get(&node.to_string())
        .is_some_and(|&pid| kernel::alive(pid));
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, GATEWAY_HTTP_PORT));
    let timeout = Duration::from_millis(800);
    let (health, ip, metrics) = tokio::join!(
        traffic::http_get(&ns, addr, "/readyz", timeout),
        traffic::http_get(&ns, addr, "/public-ip", timeout),
        traffic::http_get(&ns, addr, "/metrics", timeout),
    );
    let healthy = running && health.map(|r| r.status == 200).unwrap_or(false);
    let public_ip = ip
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| parse_public_ip(&r.body));
    let (flows, bytes) = metrics
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| parse_gateway_metrics(&r.body))
        .unwrap_or((None, None));
    GatewayStatus {
        name: node.to_string(),
        provider: NodeName::Provider(g.provider).to_string(),
        lan_addr: g.lan_addr,
        running,
        healthy,
        public_ip,
        flows,
        bytes,
        outage,
    }
}

/// Reads the address from `/public-ip`: plain text or JSON with an `ip` field.
pub fn parse_public_ip(body: &str) -> Option<String> {
    let text = body.trim();
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Some(ip.to_string());
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    ["ip", "public_ip", "publicIp", "address"]
        .iter()
        .find_map(|k| v[*k].as_str().map(str::to_string))
}

/// Active flows and total bytes from the gateway's Prometheus text: sums
/// every sample whose metric name mentions flows (gauge) or bytes (counter).
pub fn parse_gateway_metrics(text: &str) -> (Option<u64>, Option<u64>) {
    let mut flows = None;
    let mut bytes = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric.contains("flows") && !metric.ends_with("_created") {
            *flows.get_or_insert(0) += value as u64;
        } else if metric.contains("bytes") && metric.ends_with("_total") {
            *bytes.get_or_insert(0) += value as u64;
        }
    }
    (flows, bytes)
}

/// Collects the status of lab `name` now.
pub async fn collect(name: &LabName) -> Result<StatusReport, LabError> {
    let dir = state::state_dir(name);
    let state = LabState::load(&dir)?;
    let t = &state.topology;
    let mut outage_addrs = std::collections::BTreeSet::new();
    for p in &t.providers {
        outage_addrs.extend(lab::outages(name, p.index));
    }
    let gateway_futures = t.gateways.iter().map(|g| {
        gateway_status(
            t,
            &state,
            g.index,
            outage_addrs.contains(&g.uplink_addr.to_string()),
        )
    });
    let gateways = futures::future::join_all(gateway_futures).await;
    let name_of_hop = |ip: Ipv4Addr| {
        t.gateways
            .iter()
            .find(|g| g.lan_addr == ip)
            .map(|g| NodeName::Gateway(g.index).to_string())
            .unwrap_or(ip.to_string())
    };
    let routers: Vec<RouterStatus> = t
        .routers
        .iter()
        .map(|r| {
            let node = NodeName::Router(r.index);
            let ns = name.netns(&node);
            RouterStatus {
                name: node.to_string(),
                lan_addr: r.lan_addr,
                running: state
                    .pids
                    .get(&node.to_string())
                    .is_some_and(|&pid| kernel::alive(pid)),
                active: kernel::holds_address(&ns, t.vip) && link_is_up(&ns),
                nexthops: kernel::router_nexthops(&ns)
                    .into_iter()
                    .map(name_of_hop)
                    .collect(),
            }
        })
        .collect();
    let active: Vec<&RouterStatus> = routers.iter().filter(|r| r.active).collect();
    let active_router = (active.len() == 1).then(|| active[0].name.clone());
    let recent_egress = daemons::recent_callers(&dir, 20)
        .into_iter()
        .map(|(at_ms, ip)| {
            let gateway = ip
                .parse()
                .ok()
                .and_then(|a| t.gateway_by_public_ip(a))
                .map(|i| NodeName::Gateway(i).to_string());
            Egress { at_ms, ip, gateway }
        })
        .collect();
    let leaked_packets =
        kernel::nft_counter_packets(&name.netns(&NodeName::Internet), LAB_TABLE, "leaked").ok();
    Ok(StatusReport {
        name: name.to_string(),
        echo_url: t.echo_url(),
        vip: t.vip,
        gateways,
        routers,
        active_router,
        clients: t
            .clients
            .iter()
            .map(|c| (NodeName::Client(c.index).to_string(), c.lan_addr))
            .collect(),
        recent_egress,
        leaked_packets,
    })
}

fn link_is_up(ns: &str) -> bool {
    kernel::run_cmd(
        "ip",
        &["-n", ns, "-j", "link", "show", crate::plan::LAN_IFACE],
        None,
    )
    .ok()
    .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
    .and_then(|v| {
        v[0]["flags"]
            .as_array()
            .map(|f| f.iter().any(|x| x.as_str() == Some("UP")))
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        let gw = |n: u32, healthy: bool, outage: bool| GatewayStatus {
            name: format!("gateway-{n}"),
            provider: "provider-1".into(),
            lan_addr: Ipv4Addr::new(10, 99, 0, 10 + n as u8),
            running: true,
            healthy,
            public_ip: None,
            flows: None,
            bytes: None,
            outage,
        };
        StatusReport {
            name: "t".into(),
            echo_url: "http://192.0.2.80/".into(),
            vip: Ipv4Addr::new(10, 99, 0, 1),
            gateways: vec![gw(1, true, false), gw(2, true, false)],
            routers: vec![RouterStatus {
                name: "router-1".into(),
                lan_addr: Ipv4Addr::new(10, 99, 0, 2),
                running: true,
                active: true,
                nexthops: vec!["gateway-1".into(), "gateway-2".into()],
            }],
            active_router: Some("router-1".into()),
            clients: vec![],
            recent_egress: vec![],
            leaked_packets: Some(0),
        }
    }

    #[test]
    fn healthy_report_has_no_problems() {
        assert_eq!(report().problems(), Vec::<String>::new());
    }

    #[test]
    fn unhealthy_gateway_still_routed_is_a_problem() {
        let mut r = report();
        r.gateways[1].healthy = false;
        let p = r.problems();
        assert!(
            p.iter().any(|s| s.contains("gateway-2 is not healthy")),
            "{p:?}"
        );
        assert!(p.iter().any(|s| s.contains("routes via")), "{p:?}");
    }

    #[test]
    fn gateway_in_outage_is_expected_to_be_down() {
        let mut r = report();
        r.gateways[1].healthy = false;
        r.gateways[1].outage = true;
        r.routers[0].nexthops = vec!["gateway-1".into()];
        assert_eq!(r.problems(), Vec::<String>::new());
    }

    #[test]
    fn leaks_and_missing_vip_are_problems() {
        let mut r = report();
        r.leaked_packets = Some(3);
        r.active_router = None;
        let p = r.problems();
        assert!(p.iter().any(|s| s.contains("leaked")));
        assert!(p.iter().any(|s| s.contains("VIP")));
    }

    #[test]
    fn metrics_are_summed_by_name() {
        let text = "# HELP x\nvpno_gateway_tunnel_bytes_total{direction=\"rx\"} 100\nvpno_gateway_tunnel_bytes_total{direction=\"tx\"} 50\nvpno_gateway_active_flows 3\nvpno_gateway_packets_total 9\n";
        assert_eq!(parse_gateway_metrics(text), (Some(3), Some(150)));
        assert_eq!(parse_gateway_metrics(""), (None, None));
    }

    #[test]
    fn public_ip_is_read_from_text_or_json() {
        assert_eq!(
            parse_public_ip("203.0.113.10\n").as_deref(),
            Some("203.0.113.10")
        );
        assert_eq!(
            parse_public_ip("{\"ip\":\"198.51.100.10\"}").as_deref(),
            Some("198.51.100.10")
        );
        assert_eq!(parse_public_ip("unknown"), None);
    }

    #[test]
    fn table_mentions_every_node() {
        let text = report().render();
        for n in [
            "gateway-1",
            "gateway-2",
            "router-1",
            "active",
            "http://192.0.2.80/",
        ] {
            assert!(text.contains(n), "{n} missing in\n{text}");
        }
    }
}
