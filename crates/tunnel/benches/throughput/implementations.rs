//! The WireGuard implementations compared: each started at both ends of the
//! path, as processes whose CPU time and memory can be read from `/proc`.

use std::process::Child;

use vpno_tunnel::Keypair;
use vpno_tunnel::external::{self, External, ExternalConfig};
use vpno_tunnel::netns::NamedNetns;

use crate::measure;

/// The two ends of the path: the server listens on 198.51.100.1, the client
/// (namespace of the iperf3 client) dials it.
pub struct Endpoints<'a> {
    pub server: &'a NamedNetns,
    pub client: &'a NamedNetns,
}

/// Addresses and keys of one implementation's tunnel.
pub struct Plan {
    pub interface: String,
    pub subnet: u8,
    pub server: Keypair,
    pub client: Keypair,
}

impl Plan {
    pub fn new(prefix: &str, subnet: u8) -> Self {
        Plan {
            // Interface names are unique machine-wide because wireguard-go's
            // and boringtun's UAPI sockets live in /var/run/wireguard.
            interface: format!("{prefix}{}", std::process::id() % 100_000),
            subnet,
            server: Keypair::generate(),
            client: Keypair::generate(),
        }
    }

    pub fn address(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.subnet)
    }
}

/// One implementation.
pub trait Implementation {
    fn name(&self) -> &'static str;
    /// `Err(why)` when it is not installed.
    fn available(&self) -> Result<(), String>;
    fn start(&self, ends: &Endpoints<'_>) -> Result<Running, String>;
}

/// Every implementation, ours first.
pub fn all() -> Vec<Box<dyn Implementation>> {
    vec![
        Box::new(crate::ours::Ours),
        Box::new(Uapi::wireguard_go()),
        Box::new(Uapi::boringtun()),
    ]
}

/// A started implementation: its processes (killed on drop) and the server's
/// tunnel address.
pub struct Running {
    pub server_address: String,
    pub ends: Ends,
}

/// The two processes of a running implementation.
pub enum Ends {
    /// Ours: children of this benchmark (see [`crate::ours`]).
    Ours(Child, Child),
    External(External, External),
}

impl Ends {
    fn pids(&self) -> (u32, u32) {
        match self {
            Ends::Ours(s, c) => (s.id(), c.id()),
            Ends::External(s, c) => (s.pid(), c.pid()),
        }
    }
}

impl Running {
    /// Pings the server's tunnel address from the client until it answers
    /// (at most 10 tries).
    pub fn wait_for_path(&self, client_ns: &NamedNetns) -> bool {
        (0..10).any(|_| {
            client_ns
                .exec("ping", &["-c", "1", "-W", "1", &self.server_address])
                .is_ok_and(|o| o.status.success())
        })
    }

    /// CPU seconds used so far by both ends.
    pub fn cpu_seconds(&self) -> f64 {
        let (server, client) = self.ends.pids();
        measure::cpu_seconds(server) + measure::cpu_seconds(client)
    }

    pub fn client_rss_kib(&self) -> Option<u64> {
        measure::rss_kib(self.ends.pids().1)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ends::Ours(server, client) = &mut self.ends {
            for child in [server, client] {
                // Closing stdin stops the child cleanly; kill after 2 s.
                drop(child.stdin.take());
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// An implementation from [`vpno_tunnel::external`].
pub struct Uapi {
    implementation: external::Implementation,
    prefix: &'static str,
    subnet: u8,
    port: u16,
}

impl Uapi {
    fn wireguard_go() -> Self {
        Uapi {
            implementation: external::Implementation::WireguardGo,
            prefix: "wgo",
            subnet: 202,
            port: 51822,
        }
    }

    fn boringtun() -> Self {
        Uapi {
            implementation: external::Implementation::BoringtunCli,
            prefix: "wgb",
            subnet: 203,
            port: 51823,
        }
    }
}

impl Implementation for Uapi {
    fn name(&self) -> &'static str {
        self.implementation.name()
    }

    fn available(&self) -> Result<(), String> {
        self.implementation
            .program()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn start(&self, ends: &Endpoints<'_>) -> Result<Running, String> {
        let plan = Plan::new(self.prefix, self.subnet);
        let net = |s: String| -> ipnet::IpNet { s.parse().expect("static address") };
        let server = ExternalConfig {
            interface: format!("{}a", plan.interface),
            private_key: plan.server.private.clone(),
            listen_port: Some(self.port),
            address: net(format!("{}/24", plan.address(1))),
            mtu: 1420,
            peer: plan.client.public,
            allowed_ips: net(format!("{}/32", plan.address(2))),
            endpoint: None,
        };
        let client = ExternalConfig {
            interface: format!("{}b", plan.interface),
            private_key: plan.client.private.clone(),
            listen_port: None,
            address: net(format!("{}/24", plan.address(2))),
            mtu: 1420,
            peer: plan.server.public,
            allowed_ips: net(format!("10.{}.0.0/24", plan.subnet)),
            endpoint: Some(
                format!("198.51.100.1:{}", self.port)
                    .parse()
                    .expect("endpoint"),
            ),
        };
        let server = External::start(self.implementation, ends.server, &server)
            .map_err(|e| e.to_string())?;
        let client = External::start(self.implementation, ends.client, &client)
            .map_err(|e| e.to_string())?;
        Ok(Running {
            server_address: plan.address(1),
            ends: Ends::External(server, client),
        })
    }
}
