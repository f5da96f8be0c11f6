//! Command-line arguments of `vpn-operator router`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv4Net;

/// `NAME=IP`: one gateway on the gateway network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayArg {
    /// Name shown in logs and `/status`.
    pub name: String,
    /// Address on the gateway network.
    pub address: Ipv4Addr,
}

impl std::str::FromStr for GatewayArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, ip) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=IP, got {s:?}"))?;
        if name.is_empty() {
            return Err(format!("empty gateway name in {s:?}"));
        }
        let address = ip
            .parse()
            .map_err(|e| format!("bad IPv4 address {ip:?} for gateway {name}: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            address,
        })
    }
}

/// `NAMESPACE/NAME` of the MaskGateway whose gateway Pods the router follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverArg {
    /// Namespace of the MaskGateway (and its Pods).
    pub namespace: String,
    /// Name of the MaskGateway.
    pub name: String,
}

impl std::str::FromStr for DiscoverArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!(
                "expected NAMESPACE/NAME of a MaskGateway, got {s:?}"
            )),
        }
    }
}

/// Duration flags take the one grammar of `vpno_sys::duration`.
use vpno_sys::positive_duration as parse_duration;

/// MAC flags take the one grammar of `vpno_sys::mac`.
pub use vpno_sys::parse_mac;

/// Command-line arguments of the router agent.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// A gateway as NAME=IP (repeat for each gateway). Its health URL is
    /// http://IP:<health-port><health-path>.
    #[arg(
        long = "gateway",
        value_name = "NAME=IP",
        required_unless_present = "discover",
        conflicts_with = "discover"
    )]
    pub gateways: Vec<GatewayArg>,
    /// Follow the gateway Pods of MaskGateway NAMESPACE/NAME (label
    /// `vpn.beebs.dev/mask-gateway=NAME`, `vpn.beebs.dev/role=gateway`;
    /// address from the `vpn.beebs.dev/network-address` annotation) instead
    /// of a static --gateway list. Needs get/list/watch on pods there.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub discover: Option<DiscoverArg>,
    /// Kubeconfig for --discover; without it the in-cluster service account is used.
    #[arg(long, value_name = "FILE", requires = "discover")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The gateway-network interface (nexthops leave through it; the VIP macvlan sits on it).
    #[arg(long, value_name = "IF")]
    pub interface: String,
    /// Source subnet of the clients whose default route this router keeps.
    #[arg(long, value_name = "CIDR")]
    pub client_subnet: Ipv4Net,
    /// The address clients use as next hop, with its prefix length (e.g. 10.77.0.1/24).
    #[arg(long, value_name = "CIDR")]
    pub vip: Ipv4Net,
    /// Name of the macvlan interface that carries the VIP while this router is active.
    #[arg(long, value_name = "NAME", default_value = "vpno-vip")]
    pub vip_interface: String,
    /// MAC address of the VIP interface; the same on both routers (like VRRP's virtual MAC).
    #[arg(long, value_name = "MAC", default_value = "02:56:50:4e:4f:01", value_parser = parse_mac)]
    pub vip_mac: [u8; 6],
    /// Priority for the active/standby election, 1-255 (higher wins ties; no
    /// preemption; 0 is reserved for the shutdown heartbeat).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..))]
    pub priority: u8,
    /// Address of another router sharing the VIP (repeat for each; one of
    /// them is active). Without any, this router is always active.
    #[arg(long = "peer", value_name = "IP")]
    pub peers: Vec<Ipv4Addr>,
    /// File holding the key (raw bytes, at least 16) that authenticates
    /// heartbeats (HMAC-SHA256, with a counter against replay). The same on
    /// every router; heartbeats without it are ignored and counted. Without
    /// this flag heartbeats are unauthenticated.
    #[arg(long, value_name = "FILE")]
    pub heartbeat_key_file: Option<std::path::PathBuf>,
    /// How far an authenticated heartbeat's timestamp may be from this
    /// router's clock (older ones count as replayed).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_max_skew: Duration,
    /// Set the gateway-network interface's MAC address to this at start, so
    /// gateways can accept client traffic from known router MACs only
    /// (`vpn-operator gateway --router-mac`).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub interface_mac: Option<[u8; 6]>,
    /// UDP port of the heartbeat exchanged with the peer.
    #[arg(long, default_value_t = 9096)]
    pub heartbeat_port: u16,
    /// Port of the gateways' health endpoint.
    #[arg(long, default_value_t = 9090)]
    pub health_port: u16,
    /// Path of the gateways' health endpoint.
    #[arg(long, default_value = "/healthz")]
    pub health_path: String,
    /// Probe (and heartbeat) interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Timeout of one health probe.
    #[arg(long, default_value = "750ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Consecutive failed probes before a gateway leaves the nexthop group.
    #[arg(long, default_value_t = 1)]
    pub fall: u32,
    /// Consecutive successful probes before a gateway rejoins the nexthop group.
    #[arg(long, default_value_t = 2)]
    pub rise: u32,
    /// Routing table of the client default route.
    #[arg(long, default_value_t = 7700)]
    pub table: u32,
    /// Priority of the policy rule `from <client-subnet> iif <vip-interface> lookup <table>`.
    #[arg(long, default_value_t = 7700)]
    pub rule_priority: u32,
    /// Nexthop id of the resilient group; a gateway's nexthop gets id+1+(the
    /// low 16 bits of its address), independent of the order of gateways.
    #[arg(long, default_value_t = 7700)]
    pub nexthop_id: u32,
    /// Bucket count of the resilient nexthop group.
    #[arg(long, default_value_t = 128)]
    pub buckets: u16,
    /// Idle time after which a bucket may move to a rejoined (underweight) gateway.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_timer: Duration,
    /// Seed of the kernel multipath hash (net.ipv4.fib_multipath_hash_seed), the
    /// same on both routers so a takeover keeps the flow→gateway mapping.
    #[arg(long, default_value_t = 0x7670_6e6f)]
    pub hash_seed: u32,
    /// Address of the HTTP server with /healthz, /status and /metrics.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9095")]
    pub listen: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RouterArgs,
    }

    fn parse(extra: &[&str]) -> Result<RouterArgs, clap::Error> {
        let mut argv = vec![
            "router",
            "--interface",
            "eth0",
            "--gateway",
            "gw1=10.0.0.11",
            "--gateway",
            "gw2=10.0.0.12",
            "--client-subnet",
            "10.0.0.0/24",
            "--vip",
            "10.0.0.1/24",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.gateways.len(), 2);
        assert_eq!(
            a.gateways[1],
            GatewayArg {
                name: "gw2".into(),
                address: Ipv4Addr::new(10, 0, 0, 12)
            }
        );
        assert_eq!(
            (a.interval, a.timeout),
            (Duration::from_secs(1), Duration::from_millis(750))
        );
        assert_eq!(
            (a.fall, a.rise, a.health_port, a.health_path.as_str()),
            (1, 2, 9090, "/healthz")
        );
        assert_eq!(
            (a.table, a.rule_priority, a.nexthop_id, a.buckets),
            (7700, 7700, 7700, 128)
        );
        assert_eq!(a.vip_interface, "vpno-vip");
        assert_eq!(a.vip_mac, vpno_net::layout::VIP_MAC);
        assert_eq!(
            (a.priority, a.peers.len(), a.heartbeat_port),
            (100, 0, 9096)
        );
        assert_eq!(
            (a.heartbeat_key_file, a.discover, a.interface_mac),
            (None, None, None)
        );
        assert_eq!(a.listen, "0.0.0.0:9095".parse().unwrap());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = parse(&["--gateway", "nonsense"]).unwrap_err().to_string();
        assert!(err.contains("expected NAME=IP"), "{err}");
        let err = parse(&["--gateway", "g=10.0.0.999"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad IPv4 address"), "{err}");
        assert!(
            parse(&["--gateway", "=10.0.0.3"])
                .unwrap_err()
                .to_string()
                .contains("empty gateway name")
        );
        assert!(
            parse(&["--interval", "soon"])
                .unwrap_err()
                .to_string()
                .contains("invalid duration \"soon\"")
        );
        assert!(parse(&["--priority", "0"]).is_err());
        assert!(
            parse(&["--vip-mac", "01:00:00:00:00:01"])
                .unwrap_err()
                .to_string()
                .contains("multicast")
        );
        assert!(parse(&["--vip-mac", "02:00:00"]).is_err());
    }

    #[test]
    fn discover_peers_and_key_flags() {
        let base = [
            "router",
            "--interface=eth0",
            "--client-subnet=10.0.0.0/24",
            "--vip=10.0.0.1/24",
        ];
        let parse_only = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(argv).map(|c| c.args)
        };
        let a = parse_only(&[
            "--discover=vpn/egress",
            "--peer=10.0.0.3",
            "--peer=10.0.0.4",
            "--heartbeat-key-file=/etc/vpno/router-key/key",
            "--interface-mac=02:56:50:52:00:02",
        ])
        .unwrap();
        assert_eq!(
            a.discover,
            Some(DiscoverArg {
                namespace: "vpn".into(),
                name: "egress".into()
            })
        );
        assert!(a.gateways.is_empty() && a.kubeconfig.is_none());
        assert_eq!(
            a.peers,
            vec![Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 4)]
        );
        assert_eq!(a.interface_mac, Some([2, 0x56, 0x50, 0x52, 0, 2]));
        assert!(
            parse_only(&["--discover=egress"])
                .unwrap_err()
                .to_string()
                .contains("NAMESPACE/NAME")
        );
        assert!(parse_only(&[]).is_err(), "--gateway or --discover required");
        assert!(
            parse_only(&["--discover=a/b", "--gateway=g=10.0.0.11"]).is_err(),
            "exclusive"
        );
        let stray = parse_only(&["--gateway=g=10.0.0.11", "--kubeconfig=/k"]);
        assert!(
            stray.is_err() || crate::egress_config(&stray.unwrap()).is_err(),
            "kubeconfig needs discover"
        );
        let cfg = crate::egress_config(&parse_only(&["--discover=a/b"]).unwrap()).unwrap();
        assert!(cfg.gateways.is_empty(), "discovery starts with no gateway");
    }

    #[test]
    fn duration_flags_use_the_shared_grammar() {
        let args = parse(&["--interval", "1.5s", "--timeout", "750ms"]).unwrap();
        assert_eq!(args.interval, Duration::from_millis(1500));
        assert_eq!(args.timeout, Duration::from_millis(750));
        assert!(parse(&["--interval", "-1s"]).is_err());
        assert!(parse(&["--interval", "0s"]).is_err());
    }

    #[test]
    fn config_rejects_duplicates_and_bad_sizes() {
        let ok = parse(&[]).unwrap();
        let cfg = crate::egress_config(&ok).unwrap();
        assert_eq!(cfg.nexthop_id(1), 7700 + 1 + 12);
        assert_eq!(cfg.client_subnet, "10.0.0.0/24".parse().unwrap());
        let dup = parse(&["--gateway", "gw1=10.0.0.13"]).unwrap();
        assert!(
            crate::egress_config(&dup)
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
        let dup_ip = parse(&["--gateway", "gw3=10.0.0.11"]).unwrap();
        assert!(
            crate::egress_config(&dup_ip)
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
        let zero = parse(&["--buckets", "0"]).unwrap();
        assert!(crate::egress_config(&zero).is_err());
        let long = parse(&["--vip-interface", "a-very-long-interface-name"]).unwrap();
        assert!(crate::egress_config(&long).is_err());
    }
}
