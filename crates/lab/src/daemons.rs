//! The lab's own long-running services, run as hidden `lab` subcommands inside
//! their namespaces: the internet's echo service and TCP sink, and each
//! provider's WireGuard server.

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::LabError;
use crate::plan::{
    ECHO_ADDR, ECHO_PORT, PROVIDER_TUNNEL_IFACE, SINK_PORT, Topology, WIREGUARD_PORT,
};

/// File in the state dir where the echo service logs each caller.
pub const ECHO_LOG: &str = "echo-callers.log";

/// Runs the echo service and the sink in the current namespace until SIGTERM.
pub async fn serve_internet(state_dir: &Path) -> Result<(), LabError> {
    let echo_addr = SocketAddr::V4(SocketAddrV4::new(ECHO_ADDR, ECHO_PORT));
    let sink_addr = SocketAddr::V4(SocketAddrV4::new(ECHO_ADDR, SINK_PORT));
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| LabError::Daemon(format!("bind {addr}: {e}")))
    };
    let echo = bind(echo_addr).await?;
    let sink = bind(sink_addr).await?;
    let log_path = state_dir.join(ECHO_LOG);
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LabError::Daemon(format!("open {}: {e}", log_path.display())))?,
    ));
    let app = axum::Router::new().fallback(echo_handler).with_state(log);
    tracing::info!(%echo_addr, %sink_addr, "internet services listening");
    let echo_task = tokio::spawn(async move {
        axum::serve(
            echo,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let sink_task = tokio::spawn(run_sink(sink));
    let term = vpno_sys::terminate_signal()
        .map_err(|e| LabError::Daemon(format!("signal handler: {e}")))?;
    tokio::select! {
        _ = term => Ok(()),
        r = echo_task => Err(LabError::Daemon(format!("echo service ended: {r:?}"))),
        r = sink_task => Err(LabError::Daemon(format!("sink ended: {r:?}"))),
    }
}

async fn echo_handler(
    State(log): State<Arc<Mutex<std::fs::File>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Gateways' health probes are not client egress.
    if uri.path() != crate::agents::PROBE_PATH
        && let Ok(mut f) = log.lock()
    {
        let _ = writeln!(f, "{ms} {}", peer.ip());
    }
    format!("{}\n", peer.ip())
}

/// The sink: greets each connection with the caller's address, then counts
/// the bytes it receives and reports the running total every 100 ms.
async fn run_sink(listener: TcpListener) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if stream
                .write_all(format!("{}\n", peer.ip()).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut total: u64 = 0;
            let mut reported = Instant::now();
            let mut dirty = false;
            loop {
                match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => {
                        total += n as u64;
                        dirty = true;
                    }
                    Err(_) => {}
                }
                if dirty && reported.elapsed() >= Duration::from_millis(100) {
                    if stream
                        .write_all(format!("{total}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    reported = Instant::now();
                    dirty = false;
                }
            }
        });
    }
}

/// Reads the last `n` callers the echo service logged: (unix ms, address).
pub fn recent_callers(state_dir: &Path, n: usize) -> Vec<(u128, String)> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(ECHO_LOG)) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .filter_map(|l| {
            let (ms, ip) = l.split_once(' ')?;
            Some((ms.parse().ok()?, ip.to_string()))
        })
        .collect()
}

/// The WireGuard server configuration of provider `k`: one peer per gateway,
/// each allowed only its own tunnel address.
pub fn provider_tunnel_config(t: &Topology, k: u32) -> Result<vpno_tunnel::TunnelConfig, LabError> {
    let p = t
        .provider(k)
        .ok_or_else(|| LabError::Daemon(format!("no provider-{k} in this lab")))?;
    let key = |text: &str| {
        vpno_tunnel::PrivateKey::from_base64(text).map_err(|e| LabError::Daemon(e.to_string()))
    };
    let mut config = vpno_tunnel::TunnelConfig::new(PROVIDER_TUNNEL_IFACE, key(&p.keys.private)?);
    config.listen_port = Some(WIREGUARD_PORT);
    config.addresses = vec![ipnet::IpNet::V4(
        ipnet::Ipv4Net::new(p.tunnel_addr, p.tunnel_subnet.prefix_len())
            .map_err(|e| LabError::Daemon(e.to_string()))?,
    )];
    config.mtu = crate::plan::TUNNEL_MTU;
    for g in p.peers.iter().filter_map(|i| t.gateway(*i)) {
        let public = vpno_tunnel::PublicKey::from_base64(&g.keys.public)
            .map_err(|e| LabError::Daemon(e.to_string()))?;
        let mut peer = vpno_tunnel::PeerConfig::new(public);
        peer.allowed_ips = vec![ipnet::IpNet::V4(ipnet::Ipv4Net::from(g.tunnel_addr))];
        config.peers.push(peer);
    }
    Ok(config)
}

/// Runs provider `k`'s WireGuard server in the current namespace until SIGTERM.
pub async fn serve_provider(state_dir: &Path, k: u32) -> Result<(), LabError> {
    let state = crate::state::LabState::load(state_dir)?;
    let config = provider_tunnel_config(&state.topology, k)?;
    let term = vpno_sys::terminate_signal()
        .map_err(|e| LabError::Daemon(format!("signal handler: {e}")))?;
    tracing::info!(
        provider = k,
        peers = config.peers.len(),
        "WireGuard server starting"
    );
    vpno_tunnel::run_tunnel_until(config, term)
        .await
        .map_err(|e| LabError::Daemon(format!("provider-{k} WireGuard server: {e}")))
}

/// Path of a node's log file in the state dir.
pub fn log_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(format!("{node}.log"))
}
