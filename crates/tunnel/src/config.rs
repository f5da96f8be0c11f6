//! Tunnel configuration: the explicit form (used by lab servers and tests)
//! and the conversion from gluetun's custom-provider variables (used by the
//! gateway as a client).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};

/// MTU used when none is configured (WireGuard's usual 1420: 1500 minus the
/// 80 bytes of IPv6 + UDP + WireGuard overhead).
pub const DEFAULT_MTU: u16 = 1420;

/// Keepalive interval a gluetun-configured client uses unless
/// `WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL` says otherwise. Keeps NAT state
/// on the way to the provider alive and gives the health check a fresh
/// handshake/traffic signal.
pub const DEFAULT_CLIENT_KEEPALIVE_SECS: u16 = 25;

/// Everything needed to start one WireGuard interface.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Name of the TUN interface to create in the current network namespace
    /// (at most 15 bytes). Interface names are per namespace, so two tunnels
    /// with the same name in different namespaces do not collide.
    pub interface_name: String,
    /// This side's private key.
    pub private_key: PrivateKey,
    /// UDP port to listen on; `None` picks a free ephemeral port (clients).
    pub listen_port: Option<u16>,
    /// Addresses assigned to the interface (e.g. `10.64.0.2/32`).
    pub addresses: Vec<IpNet>,
    /// Extra routes added to the main table via the interface, on top of the
    /// prefix routes of `addresses`. Usually empty: callers that want a
    /// default route through the tunnel add it themselves (policy routing).
    pub routes: Vec<IpNet>,
    /// Interface MTU.
    pub mtu: u16,
    /// The peers; traffic to an address goes to the peer whose `allowed_ips`
    /// hold the longest matching prefix.
    pub peers: Vec<PeerConfig>,
}

impl TunnelConfig {
    /// A configuration with no peers, addresses or routes, an ephemeral port
    /// and the default MTU.
    pub fn new(interface_name: impl Into<String>, private_key: PrivateKey) -> Self {
        TunnelConfig {
            interface_name: interface_name.into(),
            private_key,
            listen_port: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: DEFAULT_MTU,
            peers: Vec::new(),
        }
    }
}

/// One WireGuard peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Optional pre-shared key (must match on both sides).
    pub preshared_key: Option<PresharedKey>,
    /// Where to send to; `None` for road-warrior clients of a server, whose
    /// endpoint is learnt from their first authenticated packet (and updated
    /// whenever it changes, as WireGuard roaming does). A configured endpoint
    /// stays fixed unless [`PeerConfig::roaming`] is set.
    pub endpoint: Option<SocketAddr>,
    /// Whether a *configured* `endpoint` follows the peer to the source
    /// address of its authenticated packets (WireGuard roaming). Peers
    /// without a configured endpoint always learn and follow their address,
    /// whatever this says.
    ///
    /// Off by default, unlike kernel WireGuard: the gateway's kill switch
    /// lets its own traffic out only to the configured endpoint, so a client
    /// that roamed to another address (a multi-homed server answering from
    /// a second address, or an on-path attacker relaying a fresh datagram
    /// from elsewhere) would either need the kill switch to follow it (a leak
    /// path to an address nobody configured) or be dropped by it for good
    /// (handshakes to the new address retried forever). A pinned client
    /// keeps sending to the address it was given and still accepts
    /// authenticated answers from any source. Turn it on only for
    /// site-to-site peers whose firewall does not pin the endpoint.
    pub roaming: bool,
    /// Inner addresses this peer may use as source and is routed to.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer with the given key and nothing else set.
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            roaming: false,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }
}

/// Why gluetun's variables could not be turned into a tunnel configuration.
/// Every variant names the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GluetunEnvError {
    /// A required variable is not set (or empty).
    #[error("{variable} is not set; {hint}")]
    Missing {
        /// The variable name.
        variable: &'static str,
        /// What it should contain.
        hint: &'static str,
    },
    /// A key variable does not hold a WireGuard key.
    #[error("{variable} is not a valid WireGuard key: {source}")]
    Key {
        /// The variable name.
        variable: &'static str,
        /// What is wrong with it.
        source: KeyError,
    },
    /// A variable holds a value that does not parse.
    #[error("{variable}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable name.
        variable: &'static str,
        /// The offending value (never a key).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A variable and its alias are both set, to different values.
    #[error("{first}={first_value:?} and {second}={second_value:?} disagree; set only one")]
    Conflict {
        /// The first variable.
        first: &'static str,
        /// Its value.
        first_value: String,
        /// The alias.
        second: &'static str,
        /// Its value.
        second_value: String,
    },
    /// A slot above 0 has no WireGuard key of its own.
    #[error(
        "{SLOT_KEY}_{slot} is not set: slot {slot} needs a WireGuard key of its own (one key is \
         one device at the provider; the plain {SLOT_KEY} serves slot 0 only)"
    )]
    SlotKeyMissing {
        /// The slot.
        slot: u32,
    },
}

/// The variable whose per-slot form a slot above 0 must have.
const SLOT_KEY: &str = "WIREGUARD_PRIVATE_KEY";

/// Whether `name` is a variable a Secret may give per slot as
/// `<name>_<slot>`: gluetun's WireGuard variables and the endpoint.
pub fn is_slot_variable(name: &str) -> bool {
    name.starts_with("WIREGUARD_") || name.starts_with("VPN_ENDPOINT_")
}

/// The name `name` has for `slot` (`WIREGUARD_ADDRESSES_2`).
pub fn slot_variable(name: &str, slot: u32) -> String {
    format!("{name}_{slot}")
}

/// The variables as slot `slot` of an account sees them: each per-slot
/// value (`WIREGUARD_PRIVATE_KEY_<slot>`, `WIREGUARD_ADDRESSES_<slot>`, …,
/// see [`is_slot_variable`]) replaces its plain name; plain names serve
/// where no per-slot value exists. A slot above 0 must have its own
/// `WIREGUARD_PRIVATE_KEY_<slot>`, so two gateways never share a key.
pub fn slot_env(
    env: &HashMap<String, String>,
    slot: u32,
) -> Result<HashMap<String, String>, GluetunEnvError> {
    if slot > 0 && lookup(env, &slot_variable(SLOT_KEY, slot)).is_none() {
        return Err(GluetunEnvError::SlotKeyMissing { slot });
    }
    let suffix = format!("_{slot}");
    let mut out = env.clone();
    for (name, value) in env {
        if let Some(base) = name.strip_suffix(&suffix)
            && is_slot_variable(base)
            && !value.trim().is_empty()
        {
            out.insert(base.to_string(), value.clone());
        }
    }
    Ok(out)
}

/// A WireGuard client described by gluetun's custom-provider variables
/// (`VPN_SERVICE_PROVIDER=custom`, `VPN_TYPE=wireguard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GluetunWireguard {
    /// `WIREGUARD_PRIVATE_KEY`.
    pub private_key: PrivateKey,
    /// `WIREGUARD_ADDRESSES`: the client's inner addresses.
    pub addresses: Vec<IpNet>,
    /// `VPN_ENDPOINT_IP`/`WIREGUARD_ENDPOINT_IP` and
    /// `VPN_ENDPOINT_PORT`/`WIREGUARD_ENDPOINT_PORT`.
    pub endpoint: SocketAddr,
    /// `WIREGUARD_PUBLIC_KEY`: the server's public key.
    pub server_public_key: PublicKey,
    /// `WIREGUARD_PRESHARED_KEY`.
    pub preshared_key: Option<PresharedKey>,
    /// `WIREGUARD_MTU` (default [`DEFAULT_MTU`]).
    pub mtu: u16,
    /// `WIREGUARD_ALLOWED_IPS` (default `0.0.0.0/0,::/0`).
    pub allowed_ips: Vec<IpNet>,
    /// `WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL` as whole seconds (default
    /// [`DEFAULT_CLIENT_KEEPALIVE_SECS`]; `0` disables it).
    pub persistent_keepalive: Option<u16>,
}

fn lookup<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Reads a variable that has a gluetun alias; both set to different values is
/// an error.
fn lookup_aliased<'a>(
    env: &'a HashMap<String, String>,
    primary: &'static str,
    alias: &'static str,
) -> Result<Option<(&'static str, &'a str)>, GluetunEnvError> {
    match (lookup(env, primary), lookup(env, alias)) {
        (Some(a), Some(b)) if a != b => Err(GluetunEnvError::Conflict {
            first: primary,
            first_value: a.to_string(),
            second: alias,
            second_value: b.to_string(),
        }),
        (Some(a), _) => Ok(Some((primary, a))),
        (None, Some(b)) => Ok(Some((alias, b))),
        (None, None) => Ok(None),
    }
}

fn parse_net_list(variable: &'static str, value: &str) -> Result<Vec<IpNet>, GluetunEnvError> {
    let mut nets = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net,
            // gluetun accepts bare addresses and treats them as host routes.
            Err(_) => match item.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(GluetunEnvError::Invalid {
                        variable,
                        value: value.to_string(),
                        reason: format!("{item:?} is not an address or CIDR"),
                    });
                }
            },
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err(GluetunEnvError::Invalid {
            variable,
            value: value.to_string(),
            reason: "expected a comma-separated list of CIDRs".into(),
        });
    }
    Ok(nets)
}

/// Parses gluetun's duration form (`25s`, `1m`, `1m30s`, or plain seconds).
fn parse_keepalive(variable: &'static str, value: &str) -> Result<u16, GluetunEnvError> {
    let invalid = |reason: &str| GluetunEnvError::Invalid {
        variable,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(secs) = value.parse::<u16>() {
        return Ok(secs);
    }
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| invalid("expected a duration such as 25s or 1m"))?;
        number.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                Duration::from_millis(n)
            }
            ('h', _) => Duration::from_secs(n * 3600),
            ('m', _) => Duration::from_secs(n * 60),
            ('s', _) => Duration::from_secs(n),
            _ => return Err(invalid("expected a duration such as 25s or 1m")),
        };
        total += unit;
    }
    if !number.is_empty() {
        return Err(invalid("a duration needs a unit (s, m, h)"));
    }
    u16::try_from(total.as_secs()).map_err(|_| invalid("at most 65535 seconds"))
}

impl GluetunWireguard {
    /// Reads the variables from a map (process environment or an env file).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, GluetunEnvError> {
        let private_key = lookup(env, "WIREGUARD_PRIVATE_KEY")
            .ok_or(GluetunEnvError::Missing {
                variable: "WIREGUARD_PRIVATE_KEY",
                hint: "it holds this client's base64 private key",
            })
            .and_then(|v| {
                PrivateKey::from_base64(v).map_err(|source| GluetunEnvError::Key {
                    variable: "WIREGUARD_PRIVATE_KEY",
                    source,
                })
            })?;
        let server_public_key = lookup(env, "WIREGUARD_PUBLIC_KEY")
            .ok_or(GluetunEnvError::Missing {
                variable: "WIREGUARD_PUBLIC_KEY",
                hint: "it holds the server's base64 public key",
            })
            .and_then(|v| {
                PublicKey::from_base64(v).map_err(|source| GluetunEnvError::Key {
                    variable: "WIREGUARD_PUBLIC_KEY",
                    source,
                })
            })?;
        let preshared_key = lookup(env, "WIREGUARD_PRESHARED_KEY")
            .map(|v| {
                PresharedKey::from_base64(v).map_err(|source| GluetunEnvError::Key {
                    variable: "WIREGUARD_PRESHARED_KEY",
                    source,
                })
            })
            .transpose()?;
        let addresses = match lookup(env, "WIREGUARD_ADDRESSES") {
            Some(v) => parse_net_list("WIREGUARD_ADDRESSES", v)?,
            None => {
                return Err(GluetunEnvError::Missing {
                    variable: "WIREGUARD_ADDRESSES",
                    hint: "it holds the client's tunnel addresses, e.g. 10.64.0.2/32",
                });
            }
        };
        let (ip_var, ip_text) = lookup_aliased(env, "VPN_ENDPOINT_IP", "WIREGUARD_ENDPOINT_IP")?
            .ok_or(GluetunEnvError::Missing {
                variable: "VPN_ENDPOINT_IP",
                hint: "set it (or WIREGUARD_ENDPOINT_IP) to the server's IP address",
            })?;
        let ip: IpAddr = ip_text.parse().map_err(|_| GluetunEnvError::Invalid {
            variable: ip_var,
            value: ip_text.to_string(),
            reason: "expected an IP address (host names are not resolved)".into(),
        })?;
        let (port_var, port_text) =
            lookup_aliased(env, "VPN_ENDPOINT_PORT", "WIREGUARD_ENDPOINT_PORT")?.ok_or(
                GluetunEnvError::Missing {
                    variable: "VPN_ENDPOINT_PORT",
                    hint: "set it (or WIREGUARD_ENDPOINT_PORT) to the server's UDP port",
                },
            )?;
        let port: u16 =
            port_text
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| GluetunEnvError::Invalid {
                    variable: port_var,
                    value: port_text.to_string(),
                    reason: "expected a UDP port 1-65535".into(),
                })?;
        let mtu = match lookup(env, "WIREGUARD_MTU") {
            None => DEFAULT_MTU,
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|m| (576..=9000).contains(m))
                .ok_or_else(|| GluetunEnvError::Invalid {
                    variable: "WIREGUARD_MTU",
                    value: v.to_string(),
                    reason: "expected an MTU between 576 and 9000".into(),
                })?,
        };
        let allowed_ips = match lookup(env, "WIREGUARD_ALLOWED_IPS") {
            Some(v) => parse_net_list("WIREGUARD_ALLOWED_IPS", v)?,
            None => vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        };
        let persistent_keepalive = match lookup(env, "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL") {
            Some(v) => parse_keepalive("WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL", v)?,
            None => DEFAULT_CLIENT_KEEPALIVE_SECS,
        };
        Ok(GluetunWireguard {
            private_key,
            addresses,
            endpoint: SocketAddr::new(ip, port),
            server_public_key,
            preshared_key,
            mtu,
            allowed_ips,
            persistent_keepalive: (persistent_keepalive > 0).then_some(persistent_keepalive),
        })
    }

    /// Reads the variables of slot `slot` (see [`slot_env`]).
    pub fn from_slot_env(
        env: &HashMap<String, String>,
        slot: u32,
    ) -> Result<Self, GluetunEnvError> {
        Self::from_env(&slot_env(env, slot)?)
    }

    /// Parses `KEY=VALUE` lines (an env file: `#` comments, blank lines,
    /// optional `export ` prefix and surrounding quotes allowed) into a map.
    pub fn parse_env_file(text: &str) -> HashMap<String, String> {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            if let Some((key, value)) = line.split_once('=') {
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(value);
                map.insert(key.trim().to_string(), value.to_string());
            }
        }
        map
    }

    /// The client tunnel configuration: one peer (the server) routed for
    /// `allowed_ips`, the addresses assigned to `interface_name`, no routes
    /// (the caller decides how traffic reaches the tunnel).
    pub fn tunnel_config(&self, interface_name: impl Into<String>) -> TunnelConfig {
        TunnelConfig {
            interface_name: interface_name.into(),
            private_key: self.private_key.clone(),
            listen_port: None,
            addresses: self.addresses.clone(),
            routes: Vec::new(),
            mtu: self.mtu,
            peers: vec![PeerConfig {
                public_key: self.server_public_key,
                preshared_key: self.preshared_key.clone(),
                endpoint: Some(self.endpoint),
                // Pinned: the gateway's kill switch allows only this address.
                roaming: false,
                allowed_ips: self.allowed_ips.clone(),
                persistent_keepalive: self.persistent_keepalive,
            }],
        }
    }

    /// Renders the variables gluetun (or [`GluetunWireguard::from_env`])
    /// reads, e.g. for a lab provider handing credentials to its clients.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let join = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut vars = vec![
            ("VPN_SERVICE_PROVIDER".into(), "custom".into()),
            ("VPN_TYPE".into(), "wireguard".into()),
            ("WIREGUARD_PRIVATE_KEY".into(), self.private_key.to_base64()),
            (
                "WIREGUARD_PUBLIC_KEY".into(),
                self.server_public_key.to_base64(),
            ),
            ("WIREGUARD_ADDRESSES".into(), join(&self.addresses)),
            ("VPN_ENDPOINT_IP".into(), self.endpoint.ip().to_string()),
            ("VPN_ENDPOINT_PORT".into(), self.endpoint.port().to_string()),
            ("WIREGUARD_MTU".into(), self.mtu.to_string()),
            ("WIREGUARD_ALLOWED_IPS".into(), join(&self.allowed_ips)),
            (
                "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL".into(),
                format!("{}s", self.persistent_keepalive.unwrap_or(0)),
            ),
        ];
        if let Some(psk) = &self.preshared_key {
            vars.push(("WIREGUARD_PRESHARED_KEY".into(), psk.to_base64()));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;

    fn base_env() -> HashMap<String, String> {
        let client = Keypair::generate();
        let server = Keypair::generate();
        HashMap::from([
            ("WIREGUARD_PRIVATE_KEY".into(), client.private.to_base64()),
            ("WIREGUARD_PUBLIC_KEY".into(), server.public.to_base64()),
            (
                "WIREGUARD_ADDRESSES".into(),
                "10.64.0.2/32, fd00::2/128".into(),
            ),
            ("WIREGUARD_ENDPOINT_IP".into(), "198.51.100.7".into()),
            ("WIREGUARD_ENDPOINT_PORT".into(), "51820".into()),
        ])
    }

    fn error_for(mutate: impl FnOnce(&mut HashMap<String, String>)) -> GluetunEnvError {
        let mut env = base_env();
        mutate(&mut env);
        GluetunWireguard::from_env(&env).unwrap_err()
    }

    #[test]
    fn each_slot_takes_its_own_values_first_and_slot_zero_the_plain_names() {
        let mut env = base_env();
        let plain = GluetunWireguard::from_env(&env).unwrap();
        let second = Keypair::generate();
        env.insert("WIREGUARD_PRIVATE_KEY_1".into(), second.private.to_base64());
        env.insert("WIREGUARD_ADDRESSES_1".into(), "10.64.0.3/32".into());
        env.insert("WIREGUARD_ENDPOINT_PORT_1".into(), "51821".into());
        // Slot 0 has no per-slot values here: the plain names.
        assert_eq!(GluetunWireguard::from_slot_env(&env, 0).unwrap(), plain);
        let one = GluetunWireguard::from_slot_env(&env, 1).unwrap();
        assert_eq!(one.private_key, second.private);
        assert_ne!(one.private_key, plain.private_key);
        assert_eq!(
            one.addresses,
            vec!["10.64.0.3/32".parse::<IpNet>().unwrap()]
        );
        // WIREGUARD_ENDPOINT_PORT_1 overrides the endpoint's port; the IP and the
        // server key are shared.
        assert_eq!(one.endpoint, "198.51.100.7:51821".parse().unwrap());
        assert_eq!(one.server_public_key, plain.server_public_key);
        // A _0 value wins over the plain name for slot 0.
        let zero = Keypair::generate();
        env.insert("WIREGUARD_PRIVATE_KEY_0".into(), zero.private.to_base64());
        assert_eq!(
            GluetunWireguard::from_slot_env(&env, 0)
                .unwrap()
                .private_key,
            zero.private
        );
    }

    #[test]
    fn a_slot_without_its_own_key_never_borrows_the_plain_one() {
        let env = base_env();
        let err = GluetunWireguard::from_slot_env(&env, 2).unwrap_err();
        assert_eq!(err, GluetunEnvError::SlotKeyMissing { slot: 2 });
        assert!(err.to_string().contains("WIREGUARD_PRIVATE_KEY_2"), "{err}");
        // Other variables are not per-slot, nor are other slots' values.
        let mut env = base_env();
        env.insert(
            "WIREGUARD_PRIVATE_KEY_2".into(),
            Keypair::generate().private.to_base64(),
        );
        env.insert("HOME_2".into(), "/elsewhere".into());
        let seen = slot_env(&env, 3);
        assert!(seen.is_err());
        let seen = slot_env(&env, 2).unwrap();
        assert!(!seen.contains_key("HOME"));
        assert!(is_slot_variable("VPN_ENDPOINT_IP") && !is_slot_variable("VPN_TYPE"));
    }

    #[test]
    fn parses_complete_set_with_defaults() {
        let env = base_env();
        let wg = GluetunWireguard::from_env(&env).unwrap();
        assert_eq!(wg.endpoint, "198.51.100.7:51820".parse().unwrap());
        assert_eq!(
            wg.addresses,
            vec![
                "10.64.0.2/32".parse::<IpNet>().unwrap(),
                "fd00::2/128".parse().unwrap()
            ]
        );
        assert_eq!(wg.mtu, DEFAULT_MTU);
        assert_eq!(wg.preshared_key, None);
        assert_eq!(wg.persistent_keepalive, Some(DEFAULT_CLIENT_KEEPALIVE_SECS));
        assert_eq!(wg.allowed_ips.len(), 2);
        let config = wg.tunnel_config("wg0");
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.peers[0].endpoint, Some(wg.endpoint));
        assert!(
            !config.peers[0].roaming,
            "a gateway client is pinned to the endpoint its kill switch allows"
        );
        assert_eq!(config.peers[0].public_key, wg.server_public_key);
        assert_eq!(config.addresses, wg.addresses);
    }

    #[test]
    fn vpn_endpoint_aliases_and_optional_values() {
        let mut env = base_env();
        env.remove("WIREGUARD_ENDPOINT_IP");
        env.remove("WIREGUARD_ENDPOINT_PORT");
        env.insert("VPN_ENDPOINT_IP".into(), "203.0.113.9".into());
        env.insert("VPN_ENDPOINT_PORT".into(), "4500".into());
        env.insert("WIREGUARD_MTU".into(), "1320".into());
        let psk = PresharedKey::generate();
        env.insert("WIREGUARD_PRESHARED_KEY".into(), psk.to_base64());
        env.insert(
            "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL".into(),
            "1m5s".into(),
        );
        env.insert("WIREGUARD_ADDRESSES".into(), "10.64.0.9".into());
        let wg = GluetunWireguard::from_env(&env).unwrap();
        assert_eq!(wg.endpoint, "203.0.113.9:4500".parse().unwrap());
        assert_eq!(wg.mtu, 1320);
        assert_eq!(wg.preshared_key, Some(psk));
        assert_eq!(wg.persistent_keepalive, Some(65));
        assert_eq!(wg.addresses, vec!["10.64.0.9/32".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn round_trips_through_to_env() {
        let mut env = base_env();
        env.insert(
            "WIREGUARD_PRESHARED_KEY".into(),
            PresharedKey::generate().to_base64(),
        );
        let wg = GluetunWireguard::from_env(&env).unwrap();
        let again = GluetunWireguard::from_env(&wg.to_env().into_iter().collect()).unwrap();
        assert_eq!(again, wg);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: Vec<(GluetunEnvError, &str)> = vec![
            (
                error_for(|e| {
                    e.remove("WIREGUARD_PRIVATE_KEY");
                }),
                "WIREGUARD_PRIVATE_KEY",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_PRIVATE_KEY".into(), "abc".into());
                }),
                "WIREGUARD_PRIVATE_KEY",
            ),
            (
                error_for(|e| {
                    e.remove("WIREGUARD_PUBLIC_KEY");
                }),
                "WIREGUARD_PUBLIC_KEY",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_PUBLIC_KEY".into(), "%%%".into());
                }),
                "WIREGUARD_PUBLIC_KEY",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_PRESHARED_KEY".into(), "AAAA".into());
                }),
                "WIREGUARD_PRESHARED_KEY",
            ),
            (
                error_for(|e| {
                    e.remove("WIREGUARD_ADDRESSES");
                }),
                "WIREGUARD_ADDRESSES",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_ADDRESSES".into(), "10.0.0.1/33".into());
                }),
                "WIREGUARD_ADDRESSES",
            ),
            (
                error_for(|e| {
                    e.remove("WIREGUARD_ENDPOINT_IP");
                }),
                "VPN_ENDPOINT_IP",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_ENDPOINT_IP".into(), "vpn.example".into());
                }),
                "WIREGUARD_ENDPOINT_IP",
            ),
            (
                error_for(|e| {
                    e.insert("VPN_ENDPOINT_IP".into(), "192.0.2.1".into());
                }),
                "VPN_ENDPOINT_IP",
            ),
            (
                error_for(|e| {
                    e.remove("WIREGUARD_ENDPOINT_PORT");
                }),
                "VPN_ENDPOINT_PORT",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_ENDPOINT_PORT".into(), "0".into());
                }),
                "WIREGUARD_ENDPOINT_PORT",
            ),
            (
                error_for(|e| {
                    e.insert("WIREGUARD_MTU".into(), "big".into());
                }),
                "WIREGUARD_MTU",
            ),
            (
                error_for(|e| {
                    e.insert(
                        "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL".into(),
                        "5x".into(),
                    );
                }),
                "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL",
            ),
        ];
        for (error, variable) in cases {
            let message = error.to_string();
            assert!(
                message.contains(variable),
                "{message:?} should name {variable}"
            );
        }
    }

    #[test]
    fn conflicting_aliases_are_reported_and_keys_never_printed() {
        let mut env = base_env();
        env.insert("VPN_ENDPOINT_PORT".into(), "1".into());
        let err = GluetunWireguard::from_env(&env).unwrap_err();
        assert!(matches!(err, GluetunEnvError::Conflict { .. }), "{err}");
        let bad_key = "x".repeat(40);
        let mut env = base_env();
        env.insert("WIREGUARD_PRIVATE_KEY".into(), bad_key.clone());
        let msg = GluetunWireguard::from_env(&env).unwrap_err().to_string();
        assert!(
            !msg.contains(&bad_key),
            "error must not echo the key: {msg}"
        );
    }

    #[test]
    fn env_file_parsing() {
        let map = GluetunWireguard::parse_env_file(
            "# comment\n\nexport A=1\nB = \"two\"\nC='three'\nnot a pair\nD=x=y\n",
        );
        assert_eq!(map.get("A").map(String::as_str), Some("1"));
        assert_eq!(map.get("B").map(String::as_str), Some("two"));
        assert_eq!(map.get("C").map(String::as_str), Some("three"));
        assert_eq!(map.get("D").map(String::as_str), Some("x=y"));
        assert_eq!(map.len(), 4);
    }
}
