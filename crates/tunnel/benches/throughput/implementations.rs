//! The WireGuard implementations compared: each started at both ends of the
//! path, as processes whose CPU time and memory can be read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpno_tunnel::Keypair;
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
    pub server: Child,
    pub client: Child,
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
        measure::cpu_seconds(self.server.id()) + measure::cpu_seconds(self.client.id())
    }

    pub fn client_rss_kib(&self) -> Option<u64> {
        measure::rss_kib(self.client.id())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in [&mut self.server, &mut self.client] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An implementation configured through the UAPI socket with `wg`:
/// wireguard-go and boringtun-cli.
pub struct Uapi {
    name: &'static str,
    program: Option<PathBuf>,
    args: &'static [&'static str],
    prefix: &'static str,
    subnet: u8,
    port: u16,
}

impl Uapi {
    fn wireguard_go() -> Self {
        Uapi {
            name: "wireguard-go",
            program: which("wireguard-go"),
            args: &["-f"],
            prefix: "wgo",
            subnet: 202,
            port: 51822,
        }
    }

    fn boringtun() -> Self {
        let program = std::env::var_os("VPNO_BORINGTUN_CLI")
            .map(PathBuf::from)
            .or_else(|| {
                Some(PathBuf::from(
                    "/var/cache/vpn-operator/tools/boringtun/bin/boringtun-cli",
                ))
                .filter(|p| p.exists())
            })
            .or_else(|| which("boringtun-cli"));
        Uapi {
            name: "boringtun-cli",
            program,
            args: &["-f", "--disable-drop-privileges"],
            prefix: "wgb",
            subnet: 203,
            port: 51823,
        }
    }

    fn spawn(&self, ns: &NamedNetns, interface: &str) -> Result<Child, String> {
        let program = self.program.as_ref().ok_or("not installed")?;
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(program)
            .args(self.args)
            .arg(interface)
            .env("WG_LOG_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))
    }

    /// Waits for the UAPI socket, then sets keys, peer, address, MTU, up.
    fn configure(
        &self,
        ns: &NamedNetns,
        interface: &str,
        own: &Keypair,
        peer: &str,
        allowed: &str,
        endpoint: Option<String>,
        cidr: &str,
    ) -> Result<(), String> {
        let socket = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(format!("no UAPI socket {}", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = std::env::temp_dir().join(format!("vpno-bench-{interface}.key"));
        std::fs::write(&key_file, own.private.to_base64()).map_err(|e| e.to_string())?;
        let key = key_file.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut args = vec![
            "set",
            interface,
            "private-key",
            &key,
            "peer",
            peer,
            "allowed-ips",
            allowed,
        ];
        let endpoint = endpoint.unwrap_or_default();
        if endpoint.is_empty() {
            args.splice(2..2, ["listen-port", port.as_str()]);
        } else {
            args.extend(["endpoint", &endpoint]);
        }
        let result = ns.exec("wg", &args);
        let _ = std::fs::remove_file(&key_file);
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("wg set: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => return Err(format!("wg: {e}")),
        }
        ns.ip(&["addr", "add", cidr, "dev", interface])
            .and_then(|_| ns.ip(&["link", "set", interface, "mtu", "1420", "up"]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Implementation for Uapi {
    fn name(&self) -> &'static str {
        self.name
    }

    fn available(&self) -> Result<(), String> {
        if self.program.is_none() {
            return Err(format!("{} not installed (scripts/setup)", self.name));
        }
        if which("wg").is_none() {
            return Err("wg (wireguard-tools) not installed (scripts/setup)".into());
        }
        Ok(())
    }

    fn start(&self, ends: &Endpoints<'_>) -> Result<Running, String> {
        let plan = Plan::new(self.prefix, self.subnet);
        let server_if = format!("{}a", plan.interface);
        let client_if = format!("{}b", plan.interface);
        let running = Running {
            server_address: plan.address(1),
            server: self.spawn(ends.server, &server_if)?,
            client: self.spawn(ends.client, &client_if)?,
        };
        self.configure(
            ends.server,
            &server_if,
            &plan.server,
            &plan.client.public.to_base64(),
            &format!("{}/32", plan.address(2)),
            None,
            &format!("{}/24", plan.address(1)),
        )?;
        self.configure(
            ends.client,
            &client_if,
            &plan.client,
            &plan.server.public.to_base64(),
            &format!("10.{}.0.0/24", plan.subnet),
            Some(format!("198.51.100.1:{}", self.port)),
            &format!("{}/24", plan.address(2)),
        )?;
        Ok(running)
    }
}

/// The path of `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
