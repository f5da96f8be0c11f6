//! The records of the catalog: one [`Server`] per gluetun server entry and a
//! [`ProviderSummary`] per provider.

use serde::{Deserialize, Serialize};

/// One VPN server as gluetun describes it, plus the provider it belongs to.
///
/// Field names are gluetun's (snake_case). Absent booleans mean false and
/// absent strings mean unknown, exactly as in gluetun's files. A server
/// without a `vpn` field is an OpenVPN server (gluetun's files predate the
/// field for OpenVPN-only providers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Server {
    /// gluetun provider name (`mullvad`, `private internet access`, ...).
    pub provider: String,
    /// Tunnel protocol: `openvpn` or `wireguard`.
    pub vpn: String,
    /// Country, when the provider publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Region, when the provider publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// City, when the provider publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Hosting company of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// DNS name of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Provider's own name for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Provider's server number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// IP addresses of the server.
    #[serde(default)]
    pub ips: Vec<String>,
    /// WireGuard public key (WireGuard servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wgpubkey: Option<String>,
    /// Expected X.509 name of the OpenVPN server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<String>,
    /// OpenVPN over TCP is offered.
    #[serde(default)]
    pub tcp: bool,
    /// OpenVPN over UDP is offered.
    #[serde(default)]
    pub udp: bool,
    /// Port forwarding is offered.
    #[serde(default)]
    pub port_forward: bool,
    /// The provider owns the hardware.
    #[serde(default)]
    pub owned: bool,
    /// Usable with a free account.
    #[serde(default)]
    pub free: bool,
    /// Premium-only server.
    #[serde(default)]
    pub premium: bool,
    /// Meant for streaming.
    #[serde(default)]
    pub stream: bool,
    /// ProtonVPN Secure Core server.
    #[serde(default)]
    pub secure_core: bool,
    /// Tor over VPN server.
    #[serde(default)]
    pub tor: bool,
    /// Multi-hop server.
    #[serde(default)]
    pub multihop: bool,
    /// Provider categories (free-form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

/// How a server record looks in gluetun's files (no provider, `vpn` optional).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawServer {
    #[serde(default)]
    vpn: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    isp: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    number: Option<u32>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    wgpubkey: Option<String>,
    #[serde(default)]
    x509: Option<String>,
    #[serde(default)]
    tcp: bool,
    #[serde(default)]
    udp: bool,
    #[serde(default)]
    port_forward: bool,
    #[serde(default)]
    owned: bool,
    #[serde(default)]
    free: bool,
    #[serde(default)]
    premium: bool,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    secure_core: bool,
    #[serde(default)]
    tor: bool,
    #[serde(default)]
    multihop: bool,
    #[serde(default)]
    categories: Vec<String>,
}

/// gluetun's default when a record has no `vpn` field.
pub const DEFAULT_VPN: &str = "openvpn";

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl RawServer {
    pub(crate) fn into_server(self, provider: &str) -> Server {
        Server {
            provider: provider.to_owned(),
            vpn: non_empty(self.vpn).unwrap_or_else(|| DEFAULT_VPN.to_owned()),
            country: non_empty(self.country),
            region: non_empty(self.region),
            city: non_empty(self.city),
            isp: non_empty(self.isp),
            hostname: non_empty(self.hostname),
            server_name: non_empty(self.server_name),
            number: self.number,
            ips: self.ips,
            wgpubkey: non_empty(self.wgpubkey),
            x509: non_empty(self.x509),
            tcp: self.tcp,
            udp: self.udp,
            port_forward: self.port_forward,
            owned: self.owned,
            free: self.free,
            premium: self.premium,
            stream: self.stream,
            secure_core: self.secure_core,
            tor: self.tor,
            multihop: self.multihop,
            categories: self.categories,
        }
    }
}

/// One provider's block of servers as stored by gluetun (both layouts).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawProviderServers {
    #[serde(default)]
    pub(crate) version: u32,
    #[serde(default)]
    pub(crate) timestamp: u64,
    #[serde(default)]
    pub(crate) servers: Vec<RawServer>,
}

/// What the catalog knows about one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderSummary {
    /// gluetun provider name.
    pub name: String,
    /// Schema version of the provider's server records.
    pub version: u32,
    /// When gluetun last updated the list (Unix seconds).
    pub timestamp: u64,
    /// Number of servers.
    pub servers: usize,
}
