//! The gateway agent: one per tunnel. Runs a native userspace WireGuard
//! client from gluetun's variables (or uses a tunnel interface another
//! process runs), masquerades the gateway network out of the tunnel,
//! enforces the kill switch, and reports health, public IP and metrics.
//!
//! It works on the network namespace it runs in (`ip netns exec`, a pod):
//! every socket, TUN device, netlink socket, `nft` child and `/proc/sys`
//! write belongs to the calling thread's namespace.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conntrack;
pub mod firewall;
pub mod health;
mod http;
pub mod metrics;
pub mod natpmp;
pub mod probe;
pub mod routing;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use vpno_tunnel::{GluetunEnvError, GluetunWireguard, Tunnel, TunnelError};

use crate::firewall::{FirewallError, FirewallPlan};
use crate::health::{HealthInputs, HealthVerdict, ProbeOutcome};
use crate::metrics::{
    DeltaTracker, DirectionLabels, GatewayMetrics, ProtocolLabels, ReasonLabels, ResultLabels,
};
use crate::probe::ProbeUrl;
use crate::routing::{RoutingError, RoutingPlan};

/// Duration flags take the one grammar of `vpno_sys::duration`.
use vpno_sys::positive_duration as parse_duration;

/// Command-line arguments of `vpn-operator gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Interface facing the gateway network (where the routers are).
    #[arg(long, value_name = "IF")]
    pub lan_interface: String,
    /// Source network whose traffic is forwarded into the tunnel.
    #[arg(long, value_name = "CIDR")]
    pub gateway_network: IpNet,
    /// File of gluetun variables (`KEY=VALUE` lines) for the native tunnel;
    /// merged over the process environment (the file wins).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Use this existing tunnel interface (e.g. gluetun's `tun0`) instead of
    /// a native tunnel.
    #[arg(long, value_name = "NAME", conflicts_with = "env_file")]
    pub tunnel_interface: Option<String>,
    /// The account slot this gateway holds (`status.provider.slot` of its
    /// MaskConsumer): the native tunnel takes `WIREGUARD_*_<slot>` values
    /// first, and a slot above 0 must have its own `WIREGUARD_PRIVATE_KEY_<slot>`.
    /// Without it the plain names are used.
    #[arg(long, value_name = "N")]
    pub slot: Option<u32>,
    /// Name of the native tunnel interface.
    #[arg(long, value_name = "NAME", default_value = "wg-vpno")]
    pub wg_interface: String,
    /// URL fetched through the tunnel to prove it passes traffic; its body
    /// is taken as the public IP (e.g. the lab echo `http://203.0.113.10/`).
    /// Must use an IP address. Without it, health is handshake-only.
    #[arg(long, value_name = "URL")]
    pub probe_url: Option<ProbeUrl>,
    /// Interval between probes (and of the agent's reconcile loop).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// Timeout of one probe.
    #[arg(long, value_name = "DURATION", default_value = "900ms", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// A WireGuard handshake older than this makes the gateway unhealthy.
    #[arg(long, value_name = "DURATION", default_value = "180s", value_parser = parse_duration)]
    pub max_handshake_age: Duration,
    /// HTTP listen address for /healthz, /public-ip, /metrics.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Routing table for forwarded traffic.
    #[arg(long, value_name = "ID", default_value_t = 7710)]
    pub table: u32,
    /// Priority of the first of the two policy rules.
    #[arg(long, value_name = "PRIO", default_value_t = 7710)]
    pub rule_priority: u32,
    /// With --tunnel-interface: the VPN server's UDP endpoint, to restrict
    /// the gateway's own traffic to it (native tunnels know it already).
    #[arg(long, value_name = "IP:PORT")]
    pub vpn_endpoint: Option<SocketAddr>,
    /// Extra destinations the gateway itself may reach outside the tunnel
    /// (e.g. cluster DNS). Repeatable.
    #[arg(long = "allow-output", value_name = "CIDR")]
    pub allow_output: Vec<IpNet>,
    /// MAC address of a router (repeat for each): client traffic arriving on
    /// the LAN interface is forwarded only from these, so a client cannot
    /// send straight to a gateway around the routers. Without it, any
    /// sender on the gateway network is forwarded (as before).
    #[arg(long = "router-mac", value_name = "MAC", value_parser = vpno_sys::parse_mac)]
    pub router_macs: Vec<[u8; 6]>,
}

/// Errors of the gateway agent.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No tunnel is configured.
    #[error(
        "no tunnel configured: set gluetun's WIREGUARD_* variables (environment or --env-file) \
         or pass --tunnel-interface NAME"
    )]
    NoTunnel,
    /// The env file could not be read.
    #[error("cannot read --env-file {path}: {source}")]
    EnvFile {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The gluetun variables are wrong.
    #[error("invalid WireGuard settings: {0}")]
    Gluetun(#[from] GluetunEnvError),
    /// Invalid combination of flags.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// The native tunnel failed.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// nftables failed.
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    /// Routing failed.
    #[error("routing: {0}")]
    Routing(#[from] RoutingError),
    /// A sysctl could not be written.
    #[error(transparent)]
    Sysctl(#[from] vpno_sys::sysctl::SysctlError),
    /// Netlink or HTTP socket set-up failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Where the tunnel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelSource {
    /// Native userspace WireGuard from gluetun variables.
    Native(Box<GluetunWireguard>),
    /// An interface another process runs.
    External {
        /// The interface name.
        interface: String,
    },
}

/// Validated configuration of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The tunnel.
    pub tunnel: TunnelSource,
    /// The tunnel interface name.
    pub tunnel_interface: String,
    /// Firewall state.
    pub firewall: FirewallPlan,
    /// Routing state.
    pub routing: RoutingPlan,
}

/// Builds the configuration from arguments and an environment map (pure).
pub fn plan(
    args: &GatewayArgs,
    env: &HashMap<String, String>,
) -> Result<GatewayConfig, GatewayError> {
    if args.lan_interface.is_empty() || args.lan_interface.len() > 15 {
        return Err(GatewayError::Args(format!(
            "--lan-interface {:?} is not an interface name",
            args.lan_interface
        )));
    }
    let (tunnel, tunnel_interface, endpoint) = match &args.tunnel_interface {
        Some(name) => {
            if name == &args.lan_interface {
                return Err(GatewayError::Args(
                    "--tunnel-interface and --lan-interface are the same".into(),
                ));
            }
            (
                TunnelSource::External {
                    interface: name.clone(),
                },
                name.clone(),
                args.vpn_endpoint,
            )
        }
        None => {
            if !env.keys().any(|k| k.starts_with("WIREGUARD_")) {
                return Err(GatewayError::NoTunnel);
            }
            if args.wg_interface == args.lan_interface || args.wg_interface.len() > 15 {
                return Err(GatewayError::Args(format!(
                    "--wg-interface {:?} is not usable",
                    args.wg_interface
                )));
            }
            let wg = match args.slot {
                Some(slot) => GluetunWireguard::from_slot_env(env, slot)?,
                None => GluetunWireguard::from_env(env)?,
            };
            let endpoint = wg.endpoint;
            (
                TunnelSource::Native(Box::new(wg)),
                args.wg_interface.clone(),
                Some(endpoint),
            )
        }
    };
    if args.probe_timeout > args.probe_interval * 3 {
        return Err(GatewayError::Args(
            "--probe-timeout must be at most 3 × --probe-interval".into(),
        ));
    }
    Ok(GatewayConfig {
        firewall: FirewallPlan {
            lan_interface: args.lan_interface.clone(),
            tunnel_interface: tunnel_interface.clone(),
            gateway_network: args.gateway_network.trunc(),
            vpn_endpoint: endpoint,
            allow_output: args.allow_output.clone(),
            router_macs: args.router_macs.clone(),
        },
        routing: RoutingPlan {
            table: args.table,
            rule_priority: args.rule_priority,
            lan_interface: args.lan_interface.clone(),
            tunnel_interface: tunnel_interface.clone(),
            gateway_network: args.gateway_network.trunc(),
        },
        tunnel,
        tunnel_interface,
    })
}

/// What `/readyz` and `/public-ip` serve; updated by the agent loop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayStatus {
    /// The health verdict.
    #[serde(flatten)]
    pub verdict: HealthVerdict,
    /// Public IP from the last successful probe.
    pub public_ip: Option<String>,
    /// Tunnel interface.
    pub tunnel_interface: String,
    /// Seconds since the last handshake (native tunnels).
    pub last_handshake_seconds: Option<f64>,
    /// Latest probe.
    pub probe: Option<ProbeOutcome>,
}

pub(crate) struct Shared {
    pub(crate) status: Mutex<GatewayStatus>,
    pub(crate) metrics: GatewayMetrics,
    /// When the agent loop last finished a tick (start-up counts as one).
    pub(crate) last_tick: Mutex<Instant>,
    /// `/healthz` (liveness) fails once no tick finished for this long.
    pub(crate) alive_within: Duration,
}

/// Forwarding is switched on after the kill switch and off before clean-up,
/// never restored to what it was: a gateway must not forward unprotected.
fn write_sysctl(path: &str, value: &str) -> Result<(), GatewayError> {
    Ok(vpno_sys::sysctl::write(std::path::Path::new(path), value)?)
}

fn forwarding_sysctl(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "/proc/sys/net/ipv4/ip_forward",
        IpNet::V6(_) => "/proc/sys/net/ipv6/conf/all/forwarding",
    }
}

fn read_env(args: &GatewayArgs) -> Result<HashMap<String, String>, GatewayError> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if let Some(path) = &args.env_file {
        let text = std::fs::read_to_string(path).map_err(|source| GatewayError::EnvFile {
            path: path.clone(),
            source,
        })?;
        env.extend(GluetunWireguard::parse_env_file(&text));
    }
    Ok(env)
}

/// Runs the agent until SIGTERM or ctrl-c, then removes its state.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayError> {
    let env = read_env(&args)?;
    run_until(args, env, vpno_sys::shutdown_signal()).await
}

/// Runs the agent with an explicit environment map until `shutdown`
/// resolves (tests run it in a namespace thread), then removes the nftables
/// table, the rules and routes, turns forwarding off and stops the tunnel.
pub async fn run_until(
    args: GatewayArgs,
    env: HashMap<String, String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let config = plan(&args, &env)?;
    // Namespace-bound sockets first (see vpno_tunnel::Tunnel::start).
    let listener = std::net::TcpListener::bind(args.listen)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|source| GatewayError::Io {
            what: format!("listen on {}", args.listen),
            source,
        })?;
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| GatewayError::Io {
            what: "netlink socket".into(),
            source,
        })?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|source| GatewayError::Io {
            what: "listen".into(),
            source,
        })?;
    let netlink = tokio::spawn(connection);

    let mut tunnel = match &config.tunnel {
        TunnelSource::Native(wg) => {
            Some(Tunnel::start(wg.tunnel_config(&config.tunnel_interface)).await?)
        }
        TunnelSource::External { .. } => None,
    };
    let forwarding = forwarding_sysctl(&config.routing.gateway_network);
    let result = serve(
        &args,
        &config,
        &mut tunnel,
        &handle,
        listener,
        forwarding,
        shutdown,
    )
    .await;

    // Clean-up: forwarding off first, so nothing is forwarded unprotected
    // while the kill switch is taken down; keep going after errors.
    let mut errors = Vec::new();
    if let Err(e) = write_sysctl(forwarding, "0") {
        // Forwarding stays on (e.g. a Pod's read-only /proc/sys): the kill
        // switch stays too; the namespace goes with the Pod.
        tracing::warn!(error = %e, "cannot switch forwarding off; leaving the kill switch in place");
        drop(tunnel);
        netlink.abort();
        return result;
    }
    if let Err(e) = firewall::kernel::remove() {
        errors.push(e.to_string());
    }
    let tunnel_index = routing::link_state(&handle, &config.tunnel_interface)
        .await
        .ok()
        .flatten()
        .map(|l| l.index);
    if let Err(e) = routing::remove(&handle, &config.routing, tunnel_index).await {
        errors.push(e.to_string());
    }
    drop(tunnel);
    netlink.abort();
    match (&result, errors.is_empty()) {
        (Ok(()), true) => tracing::info!("gateway stopped; firewall, rules and routes removed"),
        (_, false) => tracing::warn!(errors = %errors.join("; "), "gateway clean-up incomplete"),
        _ => {}
    }
    result
}

async fn serve(
    args: &GatewayArgs,
    config: &GatewayConfig,
    tunnel: &mut Option<Tunnel>,
    handle: &rtnetlink::Handle,
    listener: tokio::net::TcpListener,
    forwarding: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    // Kill switch before forwarding is switched on.
    firewall::kernel::apply(&config.firewall)?;
    routing::apply_rules(handle, &config.routing).await?;
    let tunnel_index = routing::link_state(handle, &config.tunnel_interface)
        .await?
        .map(|l| l.index);
    routing::apply_routes(handle, &config.routing, tunnel_index).await?;
    write_sysctl(forwarding, "1")?;
    tracing::info!(
        tunnel = %config.tunnel_interface,
        lan = %config.routing.lan_interface,
        network = %config.routing.gateway_network,
        listen = %args.listen,
        "gateway running"
    );

    let shared = Arc::new(Shared {
        status: Mutex::new(GatewayStatus {
            verdict: HealthVerdict {
                healthy: false,
                reasons: vec!["starting".into()],
                causes: vec![health::DownCause::NoHandshake],
            },
            public_ip: None,
            tunnel_interface: config.tunnel_interface.clone(),
            last_handshake_seconds: None,
            probe: None,
        }),
        metrics: GatewayMetrics::new(),
        last_tick: Mutex::new(Instant::now()),
        alive_within: (args.probe_interval * 5).max(Duration::from_secs(10)),
    });
    let (stop_http, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, Arc::clone(&shared), async {
        let _ = stop_http_rx.await;
    }));

    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(args.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut agent = Agent::new(args, config);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {}
        }
        let step = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            step = agent.step(handle, tunnel, &shared) => step,
        };
        if let Err(e) = step {
            tracing::warn!(error = %e, "reconcile step failed");
        }
    };
    let _ = stop_http.send(());
    let _ = server.await;
    result
}

/// The per-interval work: repair routes and firewall, probe, evaluate
/// health, refresh metrics.
struct Agent<'a> {
    args: &'a GatewayArgs,
    config: &'a GatewayConfig,
    deltas: DeltaTracker,
    last_probe: Option<(Instant, Result<probe::ProbeSuccess, String>)>,
    last_public_ip: Option<String>,
    /// Client packets forwarded during the last tick (idle vs. up).
    forwarded_last_tick: u64,
    /// The last handshake's age at the previous tick (counts handshakes).
    last_handshake_age: Option<Duration>,
}

impl<'a> Agent<'a> {
    fn new(args: &'a GatewayArgs, config: &'a GatewayConfig) -> Self {
        Agent {
            args,
            config,
            deltas: DeltaTracker::default(),
            last_probe: None,
            last_public_ip: None,
            forwarded_last_tick: 0,
            last_handshake_age: None,
        }
    }

    /// One tick: restart a failed native tunnel, keep routes and firewall as
    /// desired, record counters, probe, and publish the health verdict.
    async fn step(
        &mut self,
        handle: &rtnetlink::Handle,
        tunnel: &mut Option<Tunnel>,
        shared: &Shared,
    ) -> Result<(), GatewayError> {
        self.restart_failed_tunnel(tunnel).await;
        let tunnel = tunnel.as_ref();
        let link = routing::link_state(handle, &self.config.tunnel_interface).await?;
        // Route replace is idempotent; this repairs the default route after
        // the tunnel interface was recreated.
        routing::apply_routes(handle, &self.config.routing, link.map(|l| l.index)).await?;
        self.keep_firewall(&shared.metrics)?;
        if let Some(link) = &link {
            self.record_link(link, &shared.metrics);
        }
        self.record_flows(&shared.metrics);
        if let Some(url) = self.args.probe_url.clone() {
            self.probe(&url, &shared.metrics).await;
        }
        self.publish_health(tunnel, link.is_some_and(|l| l.up), shared);
        Ok(())
    }

    /// A native tunnel whose packet processing failed (e.g. its interface
    /// was deleted) is restarted; until then forwarding hits the
    /// unreachable route and the kill switch.
    async fn restart_failed_tunnel(&self, tunnel: &mut Option<Tunnel>) {
        let TunnelSource::Native(wg) = &self.config.tunnel else {
            return;
        };
        if !tunnel.as_ref().is_some_and(|t| t.failure().is_some()) {
            return;
        }
        let failed = tunnel.take().and_then(|t| t.failure()).unwrap_or_default();
        tracing::warn!(error = %failed, "native tunnel failed; restarting it");
        match Tunnel::start(wg.tunnel_config(&self.config.tunnel_interface)).await {
            Ok(restarted) => *tunnel = Some(restarted),
            Err(e) => {
                tracing::warn!(error = %e, "native tunnel restart failed; retrying next interval")
            }
        }
    }

    /// One `nft -j list` per tick gives the counters and tells whether
    /// someone changed or removed our table (then it is applied again).
    fn keep_firewall(&mut self, metrics: &metrics::GatewayMetrics) -> Result<(), GatewayError> {
        let desired = firewall::ruleset(&self.config.firewall);
        let Some(current) =
            firewall::kernel::current().filter(|c| firewall::is_current(c, &desired))
        else {
            tracing::warn!(
                "nftables table {} missing or changed; re-applying",
                firewall::TABLE_NAME
            );
            firewall::kernel::apply(&self.config.firewall)?;
            return Ok(());
        };
        let c = firewall::counters(&current);
        let delta = self.deltas.delta("forwarded", c.forwarded_packets);
        metrics.forwarded_packets.inc_by(delta);
        self.forwarded_last_tick = delta;
        for (reason, value) in [
            ("killswitch", c.killswitch_dropped_packets),
            ("guard", c.guard_dropped_packets),
            ("output", c.output_dropped_packets),
        ] {
            let delta = self.deltas.delta(reason, value);
            metrics
                .dropped_packets
                .get_or_create(&ReasonLabels { reason })
                .inc_by(delta);
        }
        Ok(())
    }

    /// The tunnel interface's byte and packet counters.
    fn record_link(&mut self, link: &routing::LinkState, metrics: &metrics::GatewayMetrics) {
        for (key, direction, value, family) in [
            ("rx_bytes", "rx", link.rx_bytes, &metrics.tunnel_bytes),
            ("tx_bytes", "tx", link.tx_bytes, &metrics.tunnel_bytes),
            ("rx_packets", "rx", link.rx_packets, &metrics.tunnel_packets),
            ("tx_packets", "tx", link.tx_packets, &metrics.tunnel_packets),
        ] {
            let delta = self.deltas.delta(key, value);
            family
                .get_or_create(&DirectionLabels { direction })
                .inc_by(delta);
        }
    }

    /// Forwarded flows by protocol, from conntrack.
    fn record_flows(&self, metrics: &metrics::GatewayMetrics) {
        let flows = conntrack::count_flows(
            &conntrack::read_table(),
            &self.config.routing.gateway_network,
        );
        for (protocol, count) in flows {
            metrics
                .forwarded_flows
                .get_or_create(&ProtocolLabels { protocol })
                .set(count as i64);
        }
    }

    /// Probes through the tunnel and remembers the outcome (and the public IP).
    async fn probe(&mut self, url: &probe::ProbeUrl, metrics: &metrics::GatewayMetrics) {
        let result =
            probe::probe(url, &self.config.tunnel_interface, self.args.probe_timeout).await;
        let label = if result.is_ok() { "ok" } else { "fail" };
        metrics
            .probes
            .get_or_create(&ResultLabels { result: label })
            .inc();
        match &result {
            Ok(success) => {
                metrics
                    .probe_latency_seconds
                    .set(success.latency.as_secs_f64());
                if let Some(ip) = success.public_ip.map(|ip| ip.to_string()) {
                    if self.last_public_ip.as_ref().is_some_and(|last| *last != ip) {
                        tracing::info!(public_ip = %ip, "public IP changed");
                        metrics.public_ip_changes.inc();
                    }
                    self.last_public_ip = Some(ip);
                }
            }
            Err(e) => tracing::debug!(error = %e, "probe failed"),
        }
        self.last_probe = Some((Instant::now(), result));
    }

    /// The latest probe as the health evaluation and `/status` see it.
    fn probe_outcome(&self) -> Option<ProbeOutcome> {
        self.last_probe.as_ref().map(|(at, result)| ProbeOutcome {
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
            public_ip: result
                .as_ref()
                .ok()
                .and_then(|s| s.public_ip)
                .map(|ip| ip.to_string()),
            age: at.elapsed(),
            latency_ms: result
                .as_ref()
                .map(|s| s.latency.as_millis() as u64)
                .unwrap_or(0),
        })
    }

    /// Evaluates health ([`health::evaluate`], pure) and publishes it with
    /// the handshake age and the public IP (claimed only while the latest
    /// probe succeeded).
    fn publish_health(&mut self, tunnel: Option<&Tunnel>, interface_up: bool, shared: &Shared) {
        let metrics = &shared.metrics;
        let native = matches!(self.config.tunnel, TunnelSource::Native(_));
        let last_handshake = tunnel
            .map(Tunnel::stats)
            .as_ref()
            .and_then(|s| s.peers.first())
            .and_then(|p| p.last_handshake);
        metrics
            .handshake_age_seconds
            .set(last_handshake.map_or(-1.0, |d| d.as_secs_f64()));
        if health::handshake_happened(self.last_handshake_age, last_handshake) {
            metrics.handshakes.inc();
        }
        self.last_handshake_age = last_handshake;
        let probe = self.probe_outcome();
        let verdict = health::evaluate(&HealthInputs {
            native,
            last_handshake,
            tunnel_failure: if native && tunnel.is_none() {
                Some("native tunnel is not running (restart failed)".into())
            } else {
                tunnel.and_then(Tunnel::failure)
            },
            interface_up,
            probe_configured: self.args.probe_url.is_some(),
            probe: probe.clone(),
            max_handshake_age: self.args.max_handshake_age,
            max_probe_age: self.args.probe_interval * 3 + self.args.probe_timeout,
        });
        metrics.healthy.set(i64::from(verdict.healthy));
        metrics.show_state(
            health::tunnel_state(&verdict, self.forwarded_last_tick),
            &verdict.causes,
        );
        let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.verdict.healthy != verdict.healthy {
            if verdict.healthy {
                tracing::info!("gateway healthy");
            } else {
                tracing::warn!(reasons = %verdict.reasons.join("; "), "gateway unhealthy");
            }
        }
        status.public_ip = if probe.as_ref().is_some_and(|p| p.ok) {
            self.last_public_ip.clone()
        } else {
            None
        };
        status.verdict = verdict;
        status.last_handshake_seconds = last_handshake.map(|d| d.as_secs_f64());
        status.probe = probe;
        *shared.last_tick.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use vpno_tunnel::Keypair;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn args(extra: &[&str]) -> GatewayArgs {
        let mut argv = vec![
            "gw",
            "--lan-interface",
            "lan0",
            "--gateway-network",
            "10.77.0.5/24",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    fn wg_env() -> HashMap<String, String> {
        HashMap::from([
            (
                "WIREGUARD_PRIVATE_KEY".into(),
                Keypair::generate().private.to_base64(),
            ),
            (
                "WIREGUARD_PUBLIC_KEY".into(),
                Keypair::generate().public.to_base64(),
            ),
            ("WIREGUARD_ADDRESSES".into(), "10.64.0.2/32".into()),
            ("VPN_ENDPOINT_IP".into(), "198.51.100.1".into()),
            ("VPN_ENDPOINT_PORT".into(), "51820".into()),
        ])
    }

    #[test]
    fn native_plan_uses_the_endpoint_and_interface() {
        let a = args(&["--probe-url", "http://203.0.113.10/"]);
        assert_eq!(a.probe_interval, Duration::from_secs(1));
        assert_eq!(a.listen, "0.0.0.0:9090".parse().unwrap());
        let config = plan(&a, &wg_env()).unwrap();
        assert_eq!(config.tunnel_interface, "wg-vpno");
        assert_eq!(
            config.firewall.vpn_endpoint,
            Some("198.51.100.1:51820".parse().unwrap())
        );
        assert_eq!(
            config.firewall.gateway_network,
            "10.77.0.0/24".parse().unwrap()
        );
        assert!(matches!(config.tunnel, TunnelSource::Native(_)));
    }

    #[test]
    fn slot_flag_selects_the_slots_wireguard_values() {
        let mut env = wg_env();
        env.insert("VPN_ENDPOINT_IP_1".into(), "198.51.100.2".into());
        let err = plan(&args(&["--slot", "1"]), &env).unwrap_err().to_string();
        assert!(err.contains("WIREGUARD_PRIVATE_KEY_1"), "{err}");
        env.insert(
            "WIREGUARD_PRIVATE_KEY_1".into(),
            Keypair::generate().private.to_base64(),
        );
        let config = plan(&args(&["--slot", "1"]), &env).unwrap();
        assert_eq!(
            config.firewall.vpn_endpoint,
            Some("198.51.100.2:51820".parse().unwrap())
        );
        let config = plan(&args(&["--slot", "0"]), &env).unwrap();
        assert_eq!(
            config.firewall.vpn_endpoint,
            Some("198.51.100.1:51820".parse().unwrap())
        );
    }

    #[test]
    fn external_plan_and_errors() {
        let config = plan(&args(&["--tunnel-interface", "tun0"]), &HashMap::new()).unwrap();
        assert_eq!(
            config.tunnel,
            TunnelSource::External {
                interface: "tun0".into()
            }
        );
        assert_eq!(config.firewall.vpn_endpoint, None);
        assert!(matches!(
            plan(&args(&[]), &HashMap::new()),
            Err(GatewayError::NoTunnel)
        ));
        let mut env = wg_env();
        env.remove("WIREGUARD_PUBLIC_KEY");
        let err = plan(&args(&[]), &env).unwrap_err().to_string();
        assert!(err.contains("WIREGUARD_PUBLIC_KEY"), "{err}");
        let err = plan(&args(&["--tunnel-interface", "lan0"]), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("same"));
    }

    #[test]
    fn argument_parsing_rejects_bad_values() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "gw",
                "--lan-interface",
                "lan0",
                "--gateway-network",
                "10.77.0.0/24",
            ];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(
            parse(&["--probe-url", "http://echo.example/"])
                .unwrap_err()
                .contains("IP address")
        );
        assert!(
            parse(&["--probe-interval", "5"])
                .unwrap_err()
                .contains("unit")
        );
        assert!(parse(&["--tunnel-interface", "tun0", "--env-file", "x"]).is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("750ms").unwrap(), Duration::from_millis(750));
    }
}
