//! Parsing of `--cluster-dns` / `--upstream` server specs into hickory name-server configs.
//!
//! Syntax (one server per value; repeat the flag or separate with commas):
//! - `IP` or `IP:PORT` — plain DNS over UDP, falling back to TCP for truncated answers;
//! - `udp://IP[:PORT]`, `tcp://IP[:PORT]` — one transport only;
//! - `tls://IP[:PORT]@SERVER_NAME` — DNS over TLS (RFC 7858, default port 853), the
//!   certificate verified for `SERVER_NAME`, e.g. `tls://1.1.1.1@cloudflare-dns.com`.
//!
//! IPv6 addresses with a port use brackets: `[2001:db8::1]:53`, `tls://[2001:db8::1]@dns.example`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ProtocolConfig};

/// How the resolver talks to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// UDP, retried over TCP when the answer is truncated.
    UdpTcp,
    /// UDP only.
    Udp,
    /// TCP only.
    Tcp,
    /// DNS over TLS, verified for this server name.
    Tls {
        /// Name the server's certificate must carry.
        server_name: String,
    },
}

/// One server the resolver forwards to, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Address and port.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// A server spec that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid DNS server {spec:?}: {reason} (expected IP[:PORT], udp://, tcp:// or tls://IP[:PORT]@NAME)"
)]
pub struct SpecError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::str::FromStr for ServerSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let err = |reason| SpecError {
            spec: spec.to_owned(),
            reason,
        };
        let (scheme, rest) = match spec.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("", spec),
        };
        let (host, server_name) = match (scheme, rest.rsplit_once('@')) {
            ("tls", Some((host, name))) if !name.is_empty() => (host, Some(name)),
            ("tls", _) => {
                return Err(err(
                    "tls:// needs @SERVER_NAME for certificate verification",
                ));
            }
            (_, Some(_)) => return Err(err("@SERVER_NAME is only meaningful with tls://")),
            (_, None) => (rest, None),
        };
        let (transport, default_port) = match (scheme, server_name) {
            ("", _) => (Transport::UdpTcp, 53),
            ("udp", _) => (Transport::Udp, 53),
            ("tcp", _) => (Transport::Tcp, 53),
            ("tls", Some(name)) => (
                Transport::Tls {
                    server_name: name.to_owned(),
                },
                853,
            ),
            _ => return Err(err("unknown scheme")),
        };
        let addr = parse_addr(host, default_port).ok_or_else(|| err("not an IP address"))?;
        Ok(ServerSpec { addr, transport })
    }
}

/// `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
fn parse_addr(host: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

impl ServerSpec {
    /// The hickory name-server configuration for this server.
    pub fn name_server_config(&self) -> NameServerConfig {
        let connection = |protocol| {
            let mut c = ConnectionConfig::new(protocol);
            c.port = self.addr.port();
            c
        };
        let connections = match &self.transport {
            Transport::UdpTcp => vec![
                connection(ProtocolConfig::Udp),
                connection(ProtocolConfig::Tcp),
            ],
            Transport::Udp => vec![connection(ProtocolConfig::Udp)],
            Transport::Tcp => vec![connection(ProtocolConfig::Tcp)],
            Transport::Tls { server_name } => vec![connection(ProtocolConfig::Tls {
                server_name: Arc::from(server_name.as_str()),
            })],
        };
        NameServerConfig::new(self.addr.ip(), true, connections)
    }

    /// Whether this server is reached over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ServerSpec {
        s.parse().unwrap()
    }

    #[test]
    fn plain_addresses_default_to_port_53_over_udp_and_tcp() {
        assert_eq!(
            spec("10.96.0.10"),
            ServerSpec {
                addr: "10.96.0.10:53".parse().unwrap(),
                transport: Transport::UdpTcp
            }
        );
        assert_eq!(
            spec("127.0.0.2:5353").addr,
            "127.0.0.2:5353".parse().unwrap()
        );
        assert_eq!(
            spec("[2001:db8::1]:5353").addr,
            "[2001:db8::1]:5353".parse().unwrap()
        );
        assert_eq!(
            spec("2001:db8::1").addr,
            "[2001:db8::1]:53".parse().unwrap()
        );
    }

    #[test]
    fn schemes_pick_one_transport() {
        assert_eq!(spec("udp://192.0.2.1").transport, Transport::Udp);
        assert_eq!(spec("tcp://192.0.2.1:54").transport, Transport::Tcp);
        assert_eq!(spec("tcp://192.0.2.1:54").addr.port(), 54);
    }

    #[test]
    fn tls_defaults_to_853_and_keeps_the_server_name() {
        let s = spec("tls://1.1.1.1@cloudflare-dns.com");
        assert_eq!(s.addr, "1.1.1.1:853".parse().unwrap());
        assert_eq!(
            s.transport,
            Transport::Tls {
                server_name: "cloudflare-dns.com".into()
            }
        );
        assert!(s.is_tls());
        let s = spec("tls://[2001:db8::1]:8853@dns.example");
        assert_eq!(s.addr, "[2001:db8::1]:8853".parse().unwrap());
    }

    #[test]
    fn bad_specs_say_why() {
        for bad in [
            "",
            "dns.example",
            "tls://1.1.1.1",
            "tls://1.1.1.1@",
            "udp://1.1.1.1@x",
            "https://1.1.1.1",
            "1.1.1.1:99999",
        ] {
            let e = bad.parse::<ServerSpec>().unwrap_err();
            assert_eq!(e.spec, bad);
            assert!(e.to_string().contains("expected IP"), "{e}");
        }
    }

    #[test]
    fn name_server_config_carries_port_and_protocols() {
        let c = spec("127.0.0.3:5300").name_server_config();
        assert_eq!(c.ip, "127.0.0.3".parse::<IpAddr>().unwrap());
        let protocols: Vec<_> = c
            .connections
            .iter()
            .map(|c| (c.protocol.clone(), c.port))
            .collect();
        assert_eq!(
            protocols,
            vec![(ProtocolConfig::Udp, 5300), (ProtocolConfig::Tcp, 5300)]
        );
        let c = spec("tls://127.0.0.3@dot.test").name_server_config();
        assert_eq!(c.connections.len(), 1);
        assert_eq!(c.connections[0].port, 853);
        assert_eq!(
            c.connections[0].protocol,
            ProtocolConfig::Tls {
                server_name: Arc::from("dot.test")
            }
        );
    }
}
