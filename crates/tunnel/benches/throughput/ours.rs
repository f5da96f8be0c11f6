//! Our tunnel as a process: this benchmark re-executes itself with
//! [`CHILD_ENV`] set, and the child enters the namespace, runs one
//! `vpno_tunnel::Tunnel` on a multi-threaded runtime (as `vpn-operator
//! gateway` does) and exits when its stdin closes.

use std::io::Read as _;
use std::process::{Command, Stdio};

use serde_json::json;
use vpno_tunnel::{PeerConfig, PrivateKey, PublicKey, Tunnel, TunnelConfig};

use crate::implementations::{Endpoints, Ends, Implementation, Plan, Running};

/// The row name of our tunnel.
pub const NAME: &str = "ours";
const CHILD_ENV: &str = "VPNO_BENCH_TUNNEL_CHILD";
const PORT: u16 = 51821;

pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Our implementation.
pub struct Ours;

impl Implementation for Ours {
    fn name(&self) -> &'static str {
        NAME
    }

    fn available(&self) -> Result<(), String> {
        Ok(())
    }

    fn start(&self, ends: &Endpoints<'_>) -> Result<Running, String> {
        let plan = Plan::new("wgv", 201);
        let server = json!({
            "netns": ends.server.name(),
            "interface": format!("{}a", plan.interface),
            "private": plan.server.private.to_base64(),
            "address": format!("{}/24", plan.address(1)),
            "listen_port": PORT,
            "peer": plan.client.public.to_base64(),
            "allowed": format!("{}/32", plan.address(2)),
        });
        let client = json!({
            "netns": ends.client.name(),
            "interface": format!("{}b", plan.interface),
            "private": plan.client.private.to_base64(),
            "address": format!("{}/24", plan.address(2)),
            "peer": plan.server.public.to_base64(),
            "allowed": "10.201.0.0/24",
            "endpoint": format!("198.51.100.1:{PORT}"),
        });
        Ok(Running {
            server_address: plan.address(1),
            ends: Ends::Ours(spawn(&server)?, spawn(&client)?),
        })
    }
}

fn spawn(config: &serde_json::Value) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .env(CHILD_ENV, config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn our tunnel: {e}"))
}

/// The child: one tunnel until stdin closes.
pub fn child_main() {
    let text = std::env::var(CHILD_ENV).unwrap_or_default();
    let spec: serde_json::Value = serde_json::from_str(&text).expect("child config");
    let field = |k: &str| spec[k].as_str().unwrap_or_default().to_string();
    vpno_tunnel::netns::enter(&field("netns")).expect("enter namespace");
    let private = PrivateKey::from_base64(&field("private")).expect("private key");
    let mut config = TunnelConfig::new(field("interface"), private);
    config.addresses = vec![field("address").parse().expect("address")];
    config.listen_port = spec["listen_port"].as_u64().map(|p| p as u16);
    let mut peer = PeerConfig::new(PublicKey::from_base64(&field("peer")).expect("peer key"));
    peer.allowed_ips = vec![field("allowed").parse().expect("allowed ips")];
    peer.endpoint = spec["endpoint"]
        .as_str()
        .map(|e| e.parse().expect("endpoint"));
    config.peers.push(peer);
    // Built after entering the namespace, so every worker thread is in it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tunnel = Tunnel::start(config).await.expect("our tunnel");
        let _ = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await;
        drop(tunnel);
    });
}
