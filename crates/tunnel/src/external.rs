//! Other WireGuard implementations (Debian's `wireguard-go`, crates.io's
//! `boringtun-cli`) run as processes in a named namespace and configured
//! through their UAPI socket with `wg`: what the interoperability tests and
//! the throughput benchmark compare our tunnel with. Not used by the
//! operator itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::keys::{PrivateKey, PublicKey};
use crate::netns::NamedNetns;

/// Where `scripts/setup` installs `boringtun-cli`.
pub const BORINGTUN_CLI_CACHE: &str = "/var/cache/vpn-operator/tools/boringtun/bin/boringtun-cli";

/// Errors starting or configuring an external implementation.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The program (or `wg`) is not installed.
    #[error("{0} is not installed (scripts/setup installs it)")]
    Missing(&'static str),
    /// Starting or configuring it failed.
    #[error("{program}: {message}")]
    Failed {
        /// The implementation.
        program: &'static str,
        /// What failed.
        message: String,
    },
}

/// Which external implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// Debian's `wireguard-go`.
    WireguardGo,
    /// `boringtun-cli` from crates.io ([`BORINGTUN_CLI_CACHE`], or
    /// `$VPNO_BORINGTUN_CLI`, or on `$PATH`).
    BoringtunCli,
}

impl Implementation {
    /// Its name (as in the benchmark's table).
    pub fn name(self) -> &'static str {
        match self {
            Implementation::WireguardGo => "wireguard-go",
            Implementation::BoringtunCli => "boringtun-cli",
        }
    }

    /// The program, when installed (and `wg` too).
    pub fn program(self) -> Result<PathBuf, ExternalError> {
        which("wg").ok_or(ExternalError::Missing("wg (wireguard-tools)"))?;
        let found = match self {
            Implementation::WireguardGo => which("wireguard-go"),
            Implementation::BoringtunCli => std::env::var_os("VPNO_BORINGTUN_CLI")
                .map(PathBuf::from)
                .or_else(|| Some(PathBuf::from(BORINGTUN_CLI_CACHE)).filter(|p| is_executable(p)))
                .or_else(|| which("boringtun-cli")),
        };
        found.ok_or(ExternalError::Missing(self.name()))
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Implementation::WireguardGo => &["-f"],
            Implementation::BoringtunCli => &["-f", "--disable-drop-privileges"],
        }
    }
}

/// One end of an external tunnel.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// Interface name; unique on the machine (the UAPI sockets share
    /// `/var/run/wireguard`).
    pub interface: String,
    /// Own private key.
    pub private_key: PrivateKey,
    /// UDP port to listen on (`None`: ephemeral).
    pub listen_port: Option<u16>,
    /// Address of the interface.
    pub address: IpNet,
    /// MTU of the interface.
    pub mtu: u16,
    /// The one peer.
    pub peer: PublicKey,
    /// The peer's allowed IPs.
    pub allowed_ips: IpNet,
    /// The peer's endpoint, if this end dials.
    pub endpoint: Option<SocketAddr>,
}

/// A running external implementation; stopped (SIGTERM, SIGKILL after
/// 2 s), with its interface and UAPI socket removed, on drop.
#[derive(Debug)]
pub struct External {
    child: Child,
    socket: PathBuf,
}

impl External {
    /// Starts `implementation` in `netns` and configures it.
    pub fn start(
        implementation: Implementation,
        netns: &NamedNetns,
        config: &ExternalConfig,
    ) -> Result<External, ExternalError> {
        let program = implementation.program()?;
        let fail = |message: String| ExternalError::Failed {
            program: implementation.name(),
            message,
        };
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name()])
            .arg(&program)
            .args(implementation.args())
            .arg(&config.interface)
            .env("WG_LOG_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", program.display())))?;
        let external = External {
            child,
            socket: uapi_socket(&config.interface),
        };
        configure(netns, config).map_err(fail)?;
        Ok(external)
    }

    /// The process id (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        // `ip netns exec` execs the program, so this is its pid. SIGTERM
        // lets it remove its socket and interface itself.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn uapi_socket(interface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{interface}.sock"))
}

/// Waits for the UAPI socket, then sets key, port, peer, address, MTU, up.
fn configure(netns: &NamedNetns, config: &ExternalConfig) -> Result<(), String> {
    let interface = config.interface.as_str();
    let socket = uapi_socket(interface);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(format!("no UAPI socket {} after 10 s", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // `wg` reads keys from files only; this one lives as long as the call.
    let key_file =
        std::env::temp_dir().join(format!("vpno-{interface}-{}.key", std::process::id()));
    write_private(&key_file, &config.private_key.to_base64()).map_err(|e| e.to_string())?;
    let key = key_file.to_string_lossy().into_owned();
    let port = config.listen_port.map(|p| p.to_string());
    let peer = config.peer.to_base64();
    let allowed = config.allowed_ips.to_string();
    let endpoint = config.endpoint.map(|e| e.to_string());
    let mut args = vec!["set", interface, "private-key", &key];
    if let Some(port) = &port {
        args.extend(["listen-port", port]);
    }
    args.extend(["peer", &peer, "allowed-ips", &allowed]);
    if let Some(endpoint) = &endpoint {
        args.extend(["endpoint", endpoint]);
    }
    let result = netns.exec("wg", &args);
    let _ = std::fs::remove_file(&key_file);
    match result {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(format!(
                "wg set: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(e) => return Err(format!("wg: {e}")),
    }
    let mtu = config.mtu.to_string();
    netns
        .ip(&["addr", "add", &config.address.to_string(), "dev", interface])
        .and_then(|_| netns.ip(&["link", "set", interface, "mtu", &mtu, "up"]))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
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
