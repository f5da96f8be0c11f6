//! The router agent: health-checks gateways and keeps a resilient ECMP
//! default route over the healthy ones; two routers share a VIP
//! active/standby.
//!
//! Design:
//! - Desired kernel state is computed by [`vpno_net::egress::plan`] from
//!   (configuration, gateway health, role) and applied as a diff against
//!   the observed state ([`vpno_net::egress::diff`]) every interval — only
//!   the difference, with replace semantics, so re-applying is a no-op. A
//!   clean shutdown applies the diff to the empty state (everything the router
//!   created goes) and restores the sysctls it changed.
//! - Client traffic: policy rule `from <client-subnet> iif <vip-interface>
//!   lookup <table>`; the table holds `default nhid <group>` on a kernel
//!   resilient nexthop group (fixed bucket count) over one nexthop object per
//!   healthy gateway, or `unreachable default` when none is healthy. Multipath
//!   hashing uses the packet's L4 5-tuple (`fib_multipath_hash_policy=3`,
//!   `fib_multipath_hash_fields=0x0037`; policy 1 would reuse the socket hash
//!   TCP changes on retransmission) with a fixed
//!   seed (`fib_multipath_hash_seed`, kernel ≥ 6.11; skipped with a warning
//!   where the kernel lacks it).
//! - Gateways come from a [`gateways::GatewaySource`]: the static
//!   `--gateway` list or the gateway Pods of a MaskGateway (`--discover`,
//!   list+watch). The set may change at any time; a gateway's nexthop id
//!   depends on its address only, so adding or removing one changes the
//!   group's membership and nothing else, and the resilient group moves only
//!   the flows that must move.
//! - VIP: a macvlan on the gateway-network interface with a fixed virtual MAC
//!   and `arp_notify=1`, created while active (bringing it up sends a
//!   gratuitous ARP). Active/standby among any number of routers by the
//!   heartbeat protocol described in [`vpno_net::election`]; heartbeats
//!   optionally authenticated ([`heartbeat`]).
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod args;
pub mod gateways;
pub mod heartbeat;
pub mod http;
pub mod kernel;
pub mod nexthop;
pub mod probe;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use vpno_net::egress::{self, DefaultRoute, EgressConfig, EgressState, Gateway, Role};
use vpno_net::election::{Heartbeat, VipElection};
use vpno_net::health::GatewayHealth;

pub use args::RouterArgs;
use gateways::{GatewaySource, KubernetesGateways, StaticGateways};
use heartbeat::{HeartbeatKey, Opener, Sealer};
use http::{
    GatewayStatus, GroupStatus, LastProbe, PeerStatus, ReasonLabel, ResultLabel, RouterMetrics,
    RouterStatus, Shared,
};
use kernel::{Dataplane, KernelError, NetlinkDataplane};
use probe::{HealthProber, ProbeResult};
use vpno_sys::sysctl::{self, SysctlGuard};

/// Errors of the router agent.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The arguments do not make sense.
    #[error("invalid router configuration: {0}")]
    Config(String),
    /// Setting up or tearing down kernel state failed.
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// A sysctl could not be set.
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    /// The heartbeat key cannot be used.
    #[error(transparent)]
    Key(#[from] heartbeat::KeyError),
    /// No Kubernetes client for `--discover`.
    #[error("Kubernetes client for --discover: {0}")]
    Kube(String),
    /// A socket could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Clean shutdown could not remove everything.
    #[error("shutdown left state behind: {0}")]
    Teardown(String),
}

/// Runs the router until SIGTERM or ctrl-c, then removes what it created.
pub async fn run(args: RouterArgs) -> Result<(), RouterError> {
    run_until(args, vpno_sys::shutdown_signal()).await
}

/// Builds the planner's configuration from the arguments; its gateways are
/// the static `--gateway` list (empty with `--discover`).
pub fn egress_config(args: &RouterArgs) -> Result<EgressConfig, RouterError> {
    if args.kubeconfig.is_some() && args.discover.is_none() {
        return Err(RouterError::Config(
            "--kubeconfig is only used with --discover".into(),
        ));
    }
    if args.buckets == 0 {
        return Err(RouterError::Config("--buckets must be at least 1".into()));
    }
    if args.interval.is_zero() || args.timeout.is_zero() {
        return Err(RouterError::Config(
            "--interval and --timeout must be positive".into(),
        ));
    }
    if args.interface.len() > 15 || args.vip_interface.len() > 15 {
        return Err(RouterError::Config(
            "interface names are at most 15 bytes".into(),
        ));
    }
    if args.nexthop_id == 0 || args.nexthop_id > EgressConfig::MAX_NEXTHOP_ID_BASE {
        return Err(RouterError::Config(format!(
            "--nexthop-id must be between 1 and {} (room for one id per gateway address)",
            EgressConfig::MAX_NEXTHOP_ID_BASE
        )));
    }
    let mut config = EgressConfig {
        gateways: Vec::new(),
        interface: args.interface.clone(),
        client_subnet: args.client_subnet.trunc(),
        vip: args.vip,
        vip_interface: args.vip_interface.clone(),
        vip_mac: args.vip_mac,
        table: args.table,
        rule_priority: args.rule_priority,
        nexthop_id_base: args.nexthop_id,
        buckets: args.buckets,
        idle_timer_secs: args.idle_timer.as_secs().min(u64::from(u32::MAX / 100)) as u32,
    };
    let given: Vec<Gateway> = args
        .gateways
        .iter()
        .map(|g| Gateway {
            name: g.name.clone(),
            address: g.address,
        })
        .collect();
    let (gateways, problems) = gateways::normalize(&config, given);
    if let Some(first) = problems.first() {
        return Err(RouterError::Config(format!("--gateway: {first}")));
    }
    config.gateways = gateways;
    Ok(config)
}

/// Sets the namespace-wide sysctls the router relies on.
fn set_sysctls(guard: &mut SysctlGuard, args: &RouterArgs) -> Result<(), RouterError> {
    guard.set(sysctl::ipv4("ip_forward"), "1")?;
    // Policy 1 would hash forwarded packets by the skb hash a client's socket
    // set, which TCP re-randomises on every retransmission: flows would hop
    // between gateways (and be reset). Policy 3 hashes the packet's own fields:
    // 0x0037 = source IP, destination IP, protocol, source port, destination port.
    let fields = sysctl::ipv4("fib_multipath_hash_fields");
    if fields.exists() {
        guard.set(fields, "55")?; // 0x37
        guard.set(sysctl::ipv4("fib_multipath_hash_policy"), "3")?;
    } else {
        warn!(
            "this kernel has no net.ipv4.fib_multipath_hash_fields (< 5.12): using L4 policy 1, flows may move on TCP retransmission"
        );
        guard.set(sysctl::ipv4("fib_multipath_hash_policy"), "1")?;
    }
    let seed = sysctl::ipv4("fib_multipath_hash_seed");
    if seed.exists() {
        guard.set(seed, &args.hash_seed.to_string())?;
    } else {
        warn!(
            "this kernel has no net.ipv4.fib_multipath_hash_seed (< 6.11): flow hashing uses a per-boot random seed"
        );
    }
    // Clients and gateways share the L2 network: a redirect would send clients
    // straight to one gateway, around the router and its failover.
    guard.set(sysctl::conf("all", "send_redirects"), "0")?;
    guard.set(sysctl::conf(&args.interface, "send_redirects"), "0")?;
    // Only the VIP interface answers ARP for the VIP.
    guard.set(sysctl::conf(&args.interface, "arp_ignore"), "1")?;
    guard.set(sysctl::conf(&args.interface, "arp_announce"), "2")?;
    Ok(())
}

fn unix_ms() -> u64 {
    unix_us() / 1000
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Per-gateway runtime state.
struct GatewayRuntime {
    health: GatewayHealth,
    last: Option<(ProbeResult, Instant, u64)>,
}

/// A Kubernetes client from `--kubeconfig`, else the in-cluster service account.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, RouterError> {
    let kube_err = |e: &dyn std::fmt::Display| RouterError::Kube(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let raw = kube::config::Kubeconfig::read_from(path).map_err(|e| kube_err(&e))?;
            kube::Config::from_custom_kubeconfig(raw, &Default::default())
                .await
                .map_err(|e| kube_err(&e))?
        }
        None => kube::Config::incluster().map_err(|e| kube_err(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| kube_err(&e))
}

/// Runs the router until `shutdown` completes, then tears down, with the
/// gateway source the arguments name (`--gateway` or `--discover`).
pub async fn run_until(
    args: RouterArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let config = egress_config(&args)?;
    match &args.discover {
        None if config.gateways.is_empty() => Err(RouterError::Config(
            "at least one --gateway NAME=IP (or --discover NAMESPACE/NAME) is required".into(),
        )),
        None => {
            let source = StaticGateways::new(config.gateways.clone());
            run_with_source(args, source, "static", shutdown).await
        }
        Some(d) => {
            let client = kube_client(args.kubeconfig.as_deref()).await?;
            let source = KubernetesGateways::new(client, &d.namespace, &d.name);
            run_with_source(args, source, "kubernetes", shutdown).await
        }
    }
}

/// Runs the router with gateways from `source` (named `source_name` in
/// `/status`) until `shutdown` completes, then tears down. The lab and tests
/// use this directly (in a thread that entered the router's netns).
pub async fn run_with_source(
    args: RouterArgs,
    source: impl GatewaySource,
    source_name: &'static str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let mut config = egress_config(&args)?;
    config.gateways.clear(); // the source says which gateways there are
    let key = args
        .heartbeat_key_file
        .as_deref()
        .map(HeartbeatKey::from_file)
        .transpose()?;
    let dataplane = NetlinkDataplane::connect()?;
    let if_index = dataplane
        .link_index(&args.interface)
        .await?
        .ok_or_else(|| {
            RouterError::Config(format!(
                "interface {:?} does not exist in this namespace",
                args.interface
            ))
        })?;
    // The MAC the interface had before --interface-mac, restored on shutdown.
    let original_mac = match args.interface_mac {
        Some(mac) => dataplane.set_link_mac(if_index, mac).await?,
        None => None,
    };
    let own_address = dataplane
        .ipv4_addresses(if_index)
        .await?
        .first()
        .map(|n| n.addr());
    let own_address = match (own_address, args.peers.is_empty()) {
        (Some(a), _) => a,
        (None, true) => Ipv4Addr::UNSPECIFIED,
        (None, false) => {
            return Err(RouterError::Config(format!(
                "interface {} has no IPv4 address to send heartbeats from",
                args.interface
            )));
        }
    };
    if args.peers.contains(&own_address) {
        return Err(RouterError::Config(format!(
            "--peer {own_address} is this router's own address on {}; give the other routers' addresses",
            args.interface
        )));
    }

    let mut sysctls = SysctlGuard::default();
    if let Err(e) = set_sysctls(&mut sysctls, &args) {
        sysctls.restore();
        return Err(e);
    }

    let result = serve(
        &args,
        &mut config,
        &dataplane,
        own_address,
        key,
        (source, source_name),
        shutdown,
    )
    .await;

    // Clean shutdown: remove everything we own, keep going on errors.
    let mut failures = Vec::new();
    match dataplane.observe(&config).await {
        Ok(observed) => {
            for change in egress::diff(&EgressState::default(), &observed, config.table) {
                if let Err(e) = dataplane.apply(&change).await {
                    failures.push(format!("{change:?}: {e}"));
                }
            }
        }
        Err(e) => failures.push(format!("observing state for teardown: {e}")),
    }
    failures.extend(sysctls.restore().into_iter().map(|e| e.to_string()));
    if let Some(mac) = original_mac
        && let Err(e) = dataplane.set_link_mac(if_index, mac).await
    {
        failures.push(format!(
            "restoring the MAC address of {}: {e}",
            args.interface
        ));
    }
    info!(failures = failures.len(), "router state removed");
    result?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(RouterError::Teardown(failures.join("; ")))
    }
}

/// Sends `hb` to every peer.
async fn send_heartbeats(sock: &UdpSocket, sealer: &mut Sealer, hb: &Heartbeat, args: &RouterArgs) {
    let datagram = sealer.seal(hb, unix_us());
    for peer in &args.peers {
        if let Err(e) = sock.send_to(&datagram, (*peer, args.heartbeat_port)).await {
            warn!(peer = %peer, error = %e, "sending heartbeat failed");
        }
    }
}

/// Receives heartbeats, drops what the opener rejects (counted), forwards the rest.
fn spawn_heartbeat_receiver(
    sock: Arc<UdpSocket>,
    mut opener: Opener,
    vip: Ipv4Addr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<(Ipv4Addr, Heartbeat, Instant)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 128];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok((n, SocketAddr::V4(from))) => (n, *from.ip()),
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "heartbeat receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match opener.open(&buf[..n], from, unix_us()) {
                Ok(hb) if hb.vip == vip => {
                    if tx.send((from, hb, Instant::now())).await.is_err() {
                        return;
                    }
                }
                Ok(hb) => warn!(from = %from, vip = %hb.vip, "heartbeat for another VIP ignored"),
                Err(e) => {
                    let label = ReasonLabel { reason: e.reason() };
                    shared
                        .metrics
                        .heartbeats_rejected
                        .get_or_create(&label)
                        .inc();
                    debug!(from = %from, error = %e, "heartbeat ignored");
                }
            }
        }
    })
}

/// Probes the current gateways every interval in a task of its own, so a
/// slow round never delays heartbeats or a takeover; each round's results
/// arrive together, by address.
fn spawn_prober(
    prober: HealthProber,
    interval: std::time::Duration,
    mut addresses: watch::Receiver<Vec<Ipv4Addr>>,
    tx: mpsc::Sender<Vec<(Ipv4Addr, ProbeResult, Instant, u64)>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                // A new gateway is probed at once, not an interval later.
                changed = addresses.changed() => if changed.is_err() { return },
            }
            let current = addresses.borrow_and_update().clone();
            let round = futures::future::join_all(current.iter().map(|a| async {
                let r = prober.probe(*a).await;
                (*a, r, Instant::now(), unix_ms())
            }))
            .await;
            if tx.send(round).await.is_err() {
                return;
            }
        }
    })
}

/// Takes a new gateway set from the source: keeps the health of gateways
/// that stay, starts new ones unknown, forgets removed ones. Returns whether
/// anything changed.
fn apply_gateway_set(
    config: &mut EgressConfig,
    runtimes: &mut BTreeMap<Ipv4Addr, GatewayRuntime>,
    set: Vec<Gateway>,
    args: &RouterArgs,
) -> bool {
    let (set, warnings) = gateways::normalize(config, set);
    for w in warnings {
        warn!("{w}");
    }
    if set == config.gateways {
        return false;
    }
    for gone in config.gateways.iter().filter(|g| !set.contains(g)) {
        info!(gateway = %gone.name, address = %gone.address, "gateway removed");
    }
    for new in set.iter().filter(|g| !config.gateways.contains(g)) {
        info!(gateway = %new.name, address = %new.address, "gateway added");
    }
    runtimes.retain(|a, _| set.iter().any(|g| g.address == *a));
    for g in &set {
        runtimes.entry(g.address).or_insert_with(|| GatewayRuntime {
            health: GatewayHealth::new(args.fall, args.rise),
            last: None,
        });
    }
    config.gateways = set;
    true
}

/// The running part: HTTP server, heartbeats, gateway source, probe/reconcile loop.
async fn serve<S: GatewaySource>(
    args: &RouterArgs,
    config: &mut EgressConfig,
    dataplane: &NetlinkDataplane,
    own_address: Ipv4Addr,
    key: Option<HeartbeatKey>,
    (mut source, source_name): (S, &'static str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let metrics = RouterMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let shared = Arc::new(Shared {
        status: Mutex::new(RouterStatus {
            role: Role::Standby,
            priority: args.priority,
            vip: args.vip.to_string(),
            peers: Vec::new(),
            heartbeat_authenticated: key.is_some(),
            gateway_source: source_name,
            gateway_source_error: None,
            gateways: Vec::new(),
            nexthop_group: None,
            default_route: "absent",
            last_apply_error: None,
        }),
        metrics,
        registry,
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| RouterError::Bind {
            what: "HTTP listener",
            addr: args.listen,
            source,
        })?;
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(
        axum::serve(listener, http::app(shared.clone()))
            .with_graceful_shutdown(async {
                let _ = http_stop_rx.await;
            })
            .into_future(),
    );

    // Heartbeats.
    let heartbeat_socket = if args.peers.is_empty() {
        None
    } else {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.heartbeat_port));
        let sock = UdpSocket::bind(addr)
            .await
            .map_err(|source| RouterError::Bind {
                what: "heartbeat socket",
                addr,
                source,
            })?;
        Some(Arc::new(sock))
    };
    let mut sealer = Sealer::new(key.clone(), own_address);
    let (hb_tx, mut hb_rx) = mpsc::channel::<(Ipv4Addr, Heartbeat, Instant)>(64);
    let receiver = heartbeat_socket.clone().map(|sock| {
        let opener = Opener::new(key, args.heartbeat_max_skew);
        spawn_heartbeat_receiver(sock, opener, args.vip.addr(), shared.clone(), hb_tx)
    });

    let dead_interval = args.interval * 3;
    let mut election = VipElection::new(
        args.priority,
        own_address,
        args.peers.iter().copied(),
        dead_interval,
        Instant::now(),
    );
    if let Some(role) = election.tick(Instant::now()) {
        role_changed(role, &shared);
    }

    // The gateway source runs in a task of its own; each message is a whole
    // set, or why the source could not tell (kept in /status until the next set).
    let (set_tx, mut set_rx) = mpsc::channel::<Result<Vec<Gateway>, String>>(8);
    let source_task = tokio::spawn(async move {
        loop {
            let update = match source.next().await {
                Ok(set) => Ok(set),
                Err(gateways::GatewaySourceError::Watch(e)) => {
                    warn!(error = %e, "gateway source failed (retrying); keeping the last gateway set");
                    Err(e)
                }
                Err(e) => {
                    warn!(error = %e, "gateway source stopped; keeping the last gateway set");
                    return;
                }
            };
            if set_tx.send(update).await.is_err() {
                return;
            }
        }
    });

    let mut runtimes: BTreeMap<Ipv4Addr, GatewayRuntime> = BTreeMap::new();
    let (addresses_tx, addresses_rx) = watch::channel(Vec::<Ipv4Addr>::new());
    let (probe_tx, mut probe_rx) = mpsc::channel(4);
    let probe_task = spawn_prober(
        HealthProber::new(args.health_port, &args.health_path, args.timeout),
        args.interval,
        addresses_rx,
        probe_tx,
    );
    info!(
        source = source_name,
        interface = %config.interface,
        vip = %config.vip,
        peers = ?args.peers,
        priority = args.priority,
        authenticated = heartbeat_socket.is_some() && args.heartbeat_key_file.is_some(),
        "router starting"
    );

    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Reconcile once before the first probe: rules in place, table unreachable.
    let mut observed_after =
        reconcile(config, dataplane, &runtimes, election.role(), &shared).await;
    loop {
        let deadline = election.next_deadline(Instant::now());
        let mut dirty = false;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some((from, hb, at)) = hb_rx.recv() => {
                election.on_heartbeat(from, hb, at);
            }
            _ = sleep_until_opt(deadline) => {}
            Some(update) = set_rx.recv() => {
                let set = match update {
                    Ok(set) => {
                        shared.status.lock().expect("status lock").gateway_source_error = None;
                        set
                    }
                    Err(e) => {
                        shared.status.lock().expect("status lock").gateway_source_error = Some(e);
                        continue;
                    }
                };
                if apply_gateway_set(config, &mut runtimes, set, args) {
                    shared.metrics.gateway_set_changes.inc();
                    shared.metrics.gateways_configured.set(config.gateways.len() as i64);
                    addresses_tx.send_replace(config.gateways.iter().map(|g| g.address).collect());
                    dirty = true;
                }
            }
            Some(round) = probe_rx.recv() => {
                dirty |= record_probes(config, &mut runtimes, round, &shared);
            }
            _ = ticker.tick() => {
                if let Some(sock) = &heartbeat_socket {
                    send_heartbeats(sock, &mut sealer, &election.heartbeat(args.vip.addr()), args).await;
                }
                // Periodic reconcile also repairs state changed behind our back.
                dirty = true;
            }
        }
        if let Some(role) = election.tick(Instant::now()) {
            role_changed(role, &shared);
            dirty = true;
            // Tell the peers at once (resolves a double-active quickly).
            if let Some(sock) = &heartbeat_socket {
                send_heartbeats(
                    sock,
                    &mut sealer,
                    &election.heartbeat(args.vip.addr()),
                    args,
                )
                .await;
            }
        }
        if dirty {
            observed_after =
                reconcile(config, dataplane, &runtimes, election.role(), &shared).await;
        }
        update_status(config, &runtimes, &election, &observed_after, &shared);
    }
    probe_task.abort();
    source_task.abort();

    info!("router stopping");
    // Give up the VIP before telling the peers to take it, so two never hold it together.
    if let Err(e) = dataplane
        .apply(&egress::Change::DeleteVip {
            interface: config.vip_interface.clone(),
        })
        .await
    {
        warn!(error = %e, "removing the VIP interface failed");
    }
    if let Some(sock) = &heartbeat_socket {
        let hb = VipElection::resign_heartbeat(args.vip.addr());
        send_heartbeats(sock, &mut sealer, &hb, args).await;
    }
    if let Some(r) = receiver {
        r.abort();
    }
    let _ = http_stop_tx.send(());
    let _ = http.await;
    Ok(())
}

/// Records one probe round; returns whether a gateway's health changed.
fn record_probes(
    config: &EgressConfig,
    runtimes: &mut BTreeMap<Ipv4Addr, GatewayRuntime>,
    round: Vec<(Ipv4Addr, ProbeResult, Instant, u64)>,
    shared: &Shared,
) -> bool {
    let mut changed = false;
    for (address, result, at, unix) in round {
        // Results for a gateway removed meanwhile are dropped.
        let (Some(rt), Some(gw)) = (
            runtimes.get_mut(&address),
            config.gateways.iter().find(|g| g.address == address),
        ) else {
            continue;
        };
        let label = ResultLabel {
            result: if result.ok { "ok" } else { "error" },
        };
        shared.metrics.probes.get_or_create(&label).inc();
        if let Some(state) = rt.health.record(result.ok) {
            shared.metrics.health_changes.inc();
            info!(gateway = %gw.name, address = %gw.address, ?state, error = ?result.error, "gateway health changed");
            changed = true;
        }
        rt.last = Some((result, at, unix));
    }
    changed
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn role_changed(role: Role, shared: &Shared) {
    shared.metrics.role_changes.inc();
    shared
        .metrics
        .role_active
        .set(i64::from(role == Role::Active));
    info!(?role, "router role changed");
}

/// Observes, plans, applies the diff. Returns the state the kernel should now
/// hold (the desired state on success, the observed one otherwise).
async fn reconcile(
    config: &EgressConfig,
    dataplane: &impl Dataplane,
    runtimes: &BTreeMap<Ipv4Addr, GatewayRuntime>,
    role: Role,
    shared: &Shared,
) -> Option<EgressState> {
    let healthy = |i: usize| {
        runtimes
            .get(&config.gateways[i].address)
            .is_some_and(|r| r.health.is_healthy())
    };
    let desired = egress::plan(config, healthy, role);
    // Every change is attempted even after one fails (each is idempotent and
    // the next interval starts again from a fresh observation), so e.g. giving
    // up the VIP never waits on a nexthop the kernel refuses.
    let outcome = match dataplane.observe(config).await {
        Err(e) => Err(e.to_string()),
        Ok(observed) => {
            let mut errors = Vec::new();
            for change in egress::diff(&desired, &observed, config.table) {
                info!(?change, "applying");
                if let Err(e) = dataplane.apply(&change).await {
                    errors.push(e.to_string());
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    };
    let label = ResultLabel {
        result: if outcome.is_ok() { "ok" } else { "error" },
    };
    shared.metrics.reconciles.get_or_create(&label).inc();
    let mut status = shared.status.lock().expect("status lock");
    match outcome {
        Ok(()) => {
            status.last_apply_error = None;
            Some(desired)
        }
        Err(e) => {
            error!(error = %e, "reconcile failed; retrying next interval");
            status.last_apply_error = Some(e);
            None
        }
    }
}

fn update_status(
    config: &EgressConfig,
    runtimes: &BTreeMap<Ipv4Addr, GatewayRuntime>,
    election: &VipElection,
    state: &Option<EgressState>,
    shared: &Shared,
) {
    let now = Instant::now();
    let members = state
        .as_ref()
        .map(kernel::group_members)
        .unwrap_or_default();
    let healthy = runtimes.values().filter(|g| g.health.is_healthy()).count();
    shared.metrics.gateways_healthy.set(healthy as i64);
    shared.metrics.group_members.set(members.len() as i64);
    shared
        .metrics
        .role_active
        .set(i64::from(election.role() == Role::Active));
    let mut status = shared.status.lock().expect("status lock");
    status.role = election.role();
    status.peers = election
        .peers()
        .map(|(address, view)| PeerStatus {
            address: address.to_string(),
            role: view.map(|v| v.heartbeat.role),
            priority: view.map(|v| v.heartbeat.priority),
            last_heard_ms_ago: view
                .map(|v| now.saturating_duration_since(v.heard_at).as_millis() as u64),
        })
        .collect();
    status.gateways = config
        .gateways
        .iter()
        .enumerate()
        .filter_map(|(i, gw)| runtimes.get(&gw.address).map(|rt| (i, gw, rt)))
        .map(|(i, gw, rt)| GatewayStatus {
            name: gw.name.clone(),
            address: gw.address.to_string(),
            state: rt.health.state(),
            in_group: members.contains(&config.nexthop_id(i)),
            consecutive_failures: rt.health.consecutive_failures(),
            consecutive_successes: rt.health.consecutive_successes(),
            last_probe: rt.last.as_ref().map(|(result, at, unix)| LastProbe {
                result: result.clone(),
                age_ms: now.saturating_duration_since(*at).as_millis() as u64,
                at_unix_ms: *unix,
            }),
        })
        .collect();
    if let Some(state) = state {
        status.nexthop_group = state.group.as_ref().map(|g| GroupStatus {
            id: g.id,
            kind: "resilient",
            buckets: g.buckets,
            members: g
                .members
                .iter()
                .filter_map(|id| config.gateway_of(*id))
                .map(|gw| gw.name.clone())
                .collect(),
        });
        status.default_route = match state.default_route {
            Some(DefaultRoute::ViaGroup(_)) => "nexthop-group",
            Some(DefaultRoute::Unreachable) => "unreachable",
            None => "absent",
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpno_net::egress::{Change, RuleAction};

    /// In-memory kernel: applies changes like the kernel would, optionally
    /// refusing nexthop creation (as for an interface that is down).
    struct FakeKernel {
        state: Mutex<EgressState>,
        refuse_nexthops: bool,
    }

    impl Dataplane for FakeKernel {
        async fn observe(&self, _: &EgressConfig) -> Result<EgressState, KernelError> {
            Ok(self.state.lock().unwrap().clone())
        }
        async fn apply(&self, change: &Change) -> Result<(), KernelError> {
            if self.refuse_nexthops
                && matches!(
                    change,
                    Change::ReplaceNexthop { .. } | Change::ReplaceGroup(_)
                )
            {
                return Err(KernelError::NoSuchInterface("eth0".into()));
            }
            egress::apply(
                &mut self.state.lock().unwrap(),
                std::slice::from_ref(change),
            );
            Ok(())
        }
    }

    fn setup() -> (EgressConfig, BTreeMap<Ipv4Addr, GatewayRuntime>, Shared) {
        let args = {
            use clap::Parser;
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                args: RouterArgs,
            }
            Cli::parse_from([
                "router",
                "--interface=eth0",
                "--gateway=a=10.0.0.11",
                "--gateway=b=10.0.0.12",
                "--client-subnet=10.0.0.0/24",
                "--vip=10.0.0.1/24",
            ])
            .args
        };
        let config = egress_config(&args).unwrap();
        let gateways = config
            .gateways
            .iter()
            .map(|g| {
                (
                    g.address,
                    GatewayRuntime {
                        health: GatewayHealth::new(1, 1),
                        last: None,
                    },
                )
            })
            .collect();
        let shared = Shared {
            status: Mutex::new(RouterStatus {
                role: Role::Standby,
                priority: 1,
                vip: String::new(),
                peers: vec![],
                heartbeat_authenticated: false,
                gateway_source: "static",
                gateway_source_error: None,
                gateways: vec![],
                nexthop_group: None,
                default_route: "absent",
                last_apply_error: None,
            }),
            metrics: RouterMetrics::default(),
            registry: Default::default(),
        };
        (config, gateways, shared)
    }

    #[tokio::test]
    async fn reconcile_converges_and_is_idempotent() {
        let (config, mut gateways, shared) = setup();
        gateways
            .get_mut(&config.gateways[0].address)
            .unwrap()
            .health
            .record(true);
        gateways
            .get_mut(&config.gateways[1].address)
            .unwrap()
            .health
            .record(false);
        let kernel = FakeKernel {
            state: Mutex::new(EgressState::default()),
            refuse_nexthops: false,
        };
        let after = reconcile(&config, &kernel, &gateways, Role::Active, &shared)
            .await
            .unwrap();
        assert_eq!(*kernel.state.lock().unwrap(), after);
        assert_eq!(
            after.group.unwrap().members.into_iter().collect::<Vec<_>>(),
            vec![7700 + 1 + 11]
        );
        assert!(shared.status.lock().unwrap().last_apply_error.is_none());
        let again = kernel.state.lock().unwrap().clone();
        assert!(egress::diff(&again, &again, config.table).is_empty());
    }

    #[tokio::test]
    async fn standing_down_still_drops_the_vip_when_nexthops_fail() {
        let (config, mut gateways, shared) = setup();
        gateways
            .get_mut(&config.gateways[0].address)
            .unwrap()
            .health
            .record(true);
        let mut start = egress::plan(&config, |_| true, Role::Active);
        start.nexthops.clear();
        start.group = None;
        start.default_route = None;
        let kernel = FakeKernel {
            state: Mutex::new(start),
            refuse_nexthops: true,
        };
        assert!(
            reconcile(&config, &kernel, &gateways, Role::Standby, &shared)
                .await
                .is_none()
        );
        let state = kernel.state.lock().unwrap().clone();
        assert!(
            state.vip.is_none(),
            "VIP kept although the router is standby"
        );
        // The kill-switch rule is in place regardless.
        assert!(
            state
                .rules
                .iter()
                .any(|r| r.action == RuleAction::Unreachable)
        );
        assert!(shared.status.lock().unwrap().last_apply_error.is_some());
    }
}

#[cfg(test)]
mod gateway_set {
    use super::*;

    fn args() -> RouterArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: RouterArgs,
        }
        Cli::parse_from([
            "router",
            "--interface=eth0",
            "--discover=ns/egress",
            "--client-subnet=10.0.0.0/24",
            "--vip=10.0.0.1/24",
            "--rise=2",
        ])
        .args
    }

    fn gw(name: &str, last: u8) -> Gateway {
        Gateway {
            name: name.into(),
            address: Ipv4Addr::new(10, 0, 0, last),
        }
    }

    #[test]
    fn a_changing_set_keeps_the_health_of_gateways_that_stay() {
        let args = args();
        let mut config = egress_config(&args).unwrap();
        let mut runtimes = BTreeMap::new();
        assert!(apply_gateway_set(
            &mut config,
            &mut runtimes,
            vec![gw("b", 12), gw("a", 11)],
            &args
        ));
        assert_eq!(
            config.gateways,
            vec![gw("a", 11), gw("b", 12)],
            "sorted by name"
        );
        runtimes
            .get_mut(&config.gateways[0].address)
            .unwrap()
            .health
            .record(true);
        assert!(
            !apply_gateway_set(
                &mut config,
                &mut runtimes,
                vec![gw("a", 11), gw("b", 12)],
                &args
            ),
            "same set: no change"
        );
        // b goes, c comes: a keeps its health, c starts unknown.
        assert!(apply_gateway_set(
            &mut config,
            &mut runtimes,
            vec![gw("c", 13), gw("a", 11)],
            &args
        ));
        assert_eq!(runtimes.len(), 2);
        assert!(runtimes[&Ipv4Addr::new(10, 0, 0, 11)].health.is_healthy());
        assert_eq!(
            runtimes[&Ipv4Addr::new(10, 0, 0, 13)].health.state(),
            vpno_net::health::HealthState::Unknown
        );
        // The plan over the new set keeps a's nexthop id.
        let plan = egress::plan(&config, |i| i == 0, Role::Active);
        assert_eq!(
            plan.group.unwrap().members.into_iter().collect::<Vec<_>>(),
            vec![7700 + 1 + 11]
        );
        assert_eq!(
            plan.nexthops.keys().copied().collect::<Vec<_>>(),
            vec![7712, 7714]
        );
    }

    #[test]
    fn probe_results_of_removed_gateways_are_dropped() {
        let args = args();
        let mut config = egress_config(&args).unwrap();
        let mut runtimes = BTreeMap::new();
        apply_gateway_set(&mut config, &mut runtimes, vec![gw("a", 11)], &args);
        let shared = Shared {
            status: Mutex::new(RouterStatus {
                role: Role::Standby,
                priority: 1,
                vip: String::new(),
                peers: vec![],
                heartbeat_authenticated: false,
                gateway_source: "channel",
                gateway_source_error: None,
                gateways: vec![],
                nexthop_group: None,
                default_route: "absent",
                last_apply_error: None,
            }),
            metrics: RouterMetrics::default(),
            registry: Default::default(),
        };
        let result = |ok| ProbeResult {
            ok,
            status: None,
            error: None,
            latency_ms: 1.0,
        };
        let now = Instant::now();
        let round = vec![
            (Ipv4Addr::new(10, 0, 0, 11), result(true), now, 0),
            // probed just before it was removed
            (Ipv4Addr::new(10, 0, 0, 12), result(true), now, 0),
        ];
        assert!(record_probes(&config, &mut runtimes, round, &shared));
        assert_eq!(runtimes.len(), 1);
        assert!(runtimes[&Ipv4Addr::new(10, 0, 0, 11)].health.is_healthy());
    }
}
