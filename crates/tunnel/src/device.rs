//! The running tunnel: a TUN interface, a UDP socket and one
//! `boringtun::noise::Tunn` per peer, driven by tokio tasks: a TUN reader
//! and a UDP reader that only make (batched) system calls, crypto workers
//! (`device/pool.rs`) that encrypt or decrypt and write, and the timers.
//! The packet paths are in `device/outbound.rs` (interface → network) and
//! `device/inbound.rs` (network → interface).
//!
//! # Why not `boringtun::device::DeviceHandle`
//!
//! boringtun's device layer is configured only through its UAPI socket
//! `/var/run/wireguard/<ifname>.sock`. That path lives in the *mount*
//! namespace, not the network namespace, so two tunnels called `wg0` in two
//! lab namespaces (or two tests running in parallel) would fight over one
//! socket file; its configuration would also have to be rendered to and parsed
//! from the UAPI text protocol, it `panic!`s when an existing peer is
//! reconfigured, and it runs its own epoll threads outside our runtime.
//! Driving `Tunn` (boringtun's WireGuard state machine, the part that matters)
//! ourselves avoids all of that in about 400 lines: no files outside the
//! network namespace, typed configuration and statistics, stop on drop, and
//! task failures reported to the owner.
//!
//! # Namespaces
//!
//! The TUN interface, the UDP socket(s) and the netlink socket are all created
//! synchronously at the start of [`Tunnel::start`], before its first `.await`,
//! so they belong to the network namespace of the thread that calls it (a
//! multi-threaded runtime cannot move the task to another thread in between).
//! Run `start` on a thread that has entered the target namespace, e.g. with
//! [`crate::netns::NetnsRuntime`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TunnelConfig;
use crate::keys::PublicKey;
use crate::offload::{GSO_NONE, VnetHdr};
use crate::udp::BatchSocket;

mod inbound;
mod outbound;
mod pool;

use inbound::network_to_tun;
use outbound::tun_to_network;

/// Largest IP packet we read from the TUN device or accept from the network.
const MAX_PACKET: usize = 65_535;
/// Room for the WireGuard header and tag (32 bytes) and handshake messages
/// (148 bytes) on top of a packet.
const BUFFER_SIZE: usize = MAX_PACKET + 256;
/// How often boringtun's timers are serviced (as boringtun's device does).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Packets a reader handles through non-blocking fast paths before it
/// yields, so the other direction and the timers are never starved (they may
/// share one thread).
const BATCH: u32 = 64;

/// Errors starting or running a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The configuration cannot work (bad name, duplicate peer, ...).
    #[error("invalid tunnel configuration: {0}")]
    InvalidConfig(String),
    /// `/dev/net/tun` could not be opened or attached.
    #[error(
        "cannot create TUN interface {name:?}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)"
    )]
    CreateTun {
        /// Interface name.
        name: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind WireGuard UDP port {port}: {source}")]
    Bind {
        /// Requested port (0 = ephemeral).
        port: u16,
        /// Underlying error.
        source: io::Error,
    },
    /// Configuring the interface over netlink failed.
    #[error("cannot configure interface {name:?}: {message}")]
    Netlink {
        /// Interface name.
        name: String,
        /// What failed.
        message: String,
    },
    /// A packet-processing task failed (e.g. the TUN interface was deleted).
    #[error("tunnel {name:?} stopped: {message}")]
    Failed {
        /// Interface name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// Counters and handshake state of one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Where packets for this peer currently go (configured or learnt).
    pub endpoint: Option<SocketAddr>,
    /// Time since the current session's handshake completed; `None` when no
    /// session is established (never, or expired).
    pub last_handshake: Option<Duration>,
    /// Plaintext bytes received from this peer (as counted by boringtun).
    pub rx_bytes: u64,
    /// Plaintext bytes sent to this peer.
    pub tx_bytes: u64,
    /// Data packets received from this peer and written to the interface.
    pub rx_packets: u64,
    /// WireGuard datagrams sent to this peer (data, handshakes, keepalives).
    pub tx_packets: u64,
    /// Last measured handshake round-trip time in milliseconds.
    pub rtt_ms: Option<u32>,
}

/// A snapshot of a tunnel's state.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelStats {
    /// Interface name.
    pub interface_name: String,
    /// UDP port the tunnel listens on.
    pub listen_port: u16,
    /// One entry per configured peer, in configuration order.
    pub peers: Vec<PeerStats>,
    /// Packets read from the interface with no peer to route them to.
    pub no_route_drops: u64,
    /// Decrypted packets dropped because their source address is not in the
    /// sending peer's allowed IPs.
    pub source_drops: u64,
    /// Which kernel offloads the tunnel uses.
    pub offloads: Offloads,
}

/// The kernel offloads a tunnel got (each falls back to plain per-packet
/// I/O where the kernel lacks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// The TUN device carries `virtio_net_hdr`s: TCP super-packets (TSO)
    /// and partial checksums both ways.
    pub tun_vnet_hdr: bool,
    /// Datagram runs go out as UDP GSO sends (`UDP_SEGMENT`).
    pub udp_gso: bool,
    /// Datagrams come in as UDP GRO batches (`UDP_GRO`).
    pub udp_gro: bool,
}

struct PeerState {
    public_key: PublicKey,
    allowed_ips: Vec<IpNet>,
    tunn: Mutex<Tunn>,
    endpoint: RwLock<Option<SocketAddr>>,
    /// The endpoint was configured and must not roam (see
    /// [`crate::PeerConfig::roaming`]).
    pinned: bool,
    /// An authenticated datagram from another address than the pinned
    /// endpoint has been logged (once per peer, not per packet).
    reported_other_source: AtomicBool,
    rx_packets: AtomicU64,
    /// While set, every datagram from or to this peer is dropped (a
    /// simulated outage for this one peer; see [`Tunnel::set_peer_blocked`]).
    blocked: AtomicBool,
    tx_packets: AtomicU64,
}

impl PeerState {
    fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that an authenticated datagram came from `from`: roams there
    /// unless the endpoint is pinned.
    fn authenticated_from(&self, from: SocketAddr, tunnel: &str) {
        let change = {
            let mut endpoint = self.endpoint.write().unwrap_or_else(|e| e.into_inner());
            let change = endpoint_change(self.pinned, *endpoint, from);
            if let EndpointChange::Roamed = change {
                *endpoint = Some(from);
            }
            change
        };
        match change {
            EndpointChange::Unchanged => {}
            EndpointChange::Roamed => {
                tracing::debug!(tunnel, peer = %self.public_key, endpoint = %from, "peer endpoint learnt");
            }
            EndpointChange::Ignored => {
                if !self.reported_other_source.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        tunnel,
                        peer = %self.public_key,
                        configured = ?self.endpoint(),
                        %from,
                        "peer answers from another address than its configured endpoint; \
                         keeping the configured endpoint (pinned, no roaming)"
                    );
                }
            }
        }
    }

    fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn source_allowed(&self, ip: IpAddr) -> bool {
        self.allowed_ips.iter().any(|net| net.contains(&ip))
    }
}

/// What an authenticated datagram does to a peer's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointChange {
    /// It came from the current endpoint.
    Unchanged,
    /// The endpoint moves to the datagram's source (learning or roaming).
    Roamed,
    /// It came from elsewhere, but the endpoint is pinned.
    Ignored,
}

/// Roaming decision: a peer follows the source of its authenticated
/// datagrams, unless its configured endpoint is pinned (see
/// [`crate::PeerConfig::roaming`] for why clients are pinned).
fn endpoint_change(pinned: bool, current: Option<SocketAddr>, from: SocketAddr) -> EndpointChange {
    match current {
        Some(current) if current == from => EndpointChange::Unchanged,
        Some(_) if pinned => EndpointChange::Ignored,
        _ => EndpointChange::Roamed,
    }
}

struct Shared {
    name: String,
    listen_port: u16,
    tun: AsyncFd<File>,
    /// TUN packets carry a `virtio_net_hdr` (offloads, see [`crate::offload`]).
    vnet_hdr: bool,
    /// Decrypted TCP segments are coalesced before TUN writes (until the
    /// kernel refuses a coalesced write).
    coalesce: AtomicBool,
    udp4: BatchSocket,
    udp6: Option<BatchSocket>,
    static_private: boringtun::x25519::StaticSecret,
    static_public: boringtun::x25519::PublicKey,
    peers: Vec<PeerState>,
    by_key: HashMap<[u8; 32], usize>,
    by_index: HashMap<u32, usize>,
    /// (prefix, peer) sorted by prefix length, longest first.
    routes: Vec<(IpNet, usize)>,
    no_route_drops: AtomicU64,
    source_drops: AtomicU64,
}

impl Shared {
    fn route_index(&self, dst: IpAddr) -> Option<usize> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, i)| *i)
    }

    fn socket_for(&self, endpoint: SocketAddr) -> &BatchSocket {
        match (endpoint, &self.udp6) {
            (SocketAddr::V6(_), Some(udp6)) => udp6,
            _ => &self.udp4,
        }
    }

    async fn send(&self, peer: &PeerState, datagram: &[u8]) {
        if peer.blocked.load(Ordering::Relaxed) {
            return;
        }
        let Some(endpoint) = peer.endpoint() else {
            return;
        };
        let socket = self.socket_for(endpoint).socket();
        // Fast path without the async machinery; wait only when the socket
        // buffer is full.
        let result = match socket.try_send_to(datagram, endpoint) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                socket.send_to(datagram, endpoint).await
            }
            other => other,
        };
        match result {
            Ok(_) => {
                peer.tx_packets.fetch_add(1, Ordering::Relaxed);
            }
            // Unreachable endpoints are normal during outages; the timers
            // retry, and the health check reports it.
            Err(e) => tracing::debug!(tunnel = %self.name, %endpoint, error = %e, "send failed"),
        }
    }

    /// Sends a batch of datagrams to one peer, in order, in as few system
    /// calls as the kernel allows (see [`crate::udp`]).
    async fn send_batch(&self, peer: &PeerState, datagrams: &[&[u8]]) {
        if peer.blocked.load(Ordering::Relaxed) || datagrams.is_empty() {
            return;
        }
        let Some(endpoint) = peer.endpoint() else {
            return;
        };
        match self
            .socket_for(endpoint)
            .send_all(endpoint, datagrams)
            .await
        {
            Ok(sent) => {
                peer.tx_packets.fetch_add(sent as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(tunnel = %self.name, %endpoint, error = %e, "send failed"),
        }
    }

    /// Writes one packet (with its `virtio_net_hdr` when the device has
    /// one) to the interface.
    fn write_tun(&self, hdr: &VnetHdr, packet: &[u8]) {
        // A TUN write either takes the packet or fails at once; drop on
        // back-pressure rather than stall the network side.
        let result = if self.vnet_hdr {
            let hdr = hdr.encode();
            self.tun
                .get_ref()
                .write_vectored(&[io::IoSlice::new(&hdr), io::IoSlice::new(packet)])
        } else {
            self.tun.get_ref().write(packet)
        };
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && hdr.gso_type != GSO_NONE => {
                self.refuse_coalescing(hdr, packet)
            }
            Err(e) => tracing::trace!(tunnel = %self.name, error = %e, "TUN write dropped"),
            Ok(_) => {}
        }
    }

    /// The kernel refused a coalesced super-packet: stop coalescing for
    /// this tunnel and write this one's segments one by one.
    fn refuse_coalescing(&self, hdr: &VnetHdr, packet: &[u8]) {
        if self.coalesce.swap(false, Ordering::Relaxed) {
            tracing::info!(tunnel = %self.name, "the kernel refused a coalesced TUN write; writing packets one by one");
        }
        let mut packet = packet.to_vec();
        let mut segments = Vec::new();
        let _ = crate::offload::gso::segments(hdr, &mut packet, &mut Vec::new(), |p| {
            segments.push(p.to_vec())
        });
        for segment in segments {
            self.write_tun(&VnetHdr::data_valid(), &segment);
        }
    }
}

/// A running userspace WireGuard interface. Dropping it stops the tasks and
/// closes the TUN device, which removes the interface.
pub struct Tunnel {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    failure: watch::Receiver<Option<String>>,
    ifindex: u32,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("interface_name", &self.shared.name)
            .field("listen_port", &self.shared.listen_port)
            .field("peers", &self.shared.peers.len())
            .finish()
    }
}

fn offset_in(base: usize, slice: &[u8]) -> usize {
    slice.as_ptr() as usize - base
}

fn validate(config: &TunnelConfig) -> Result<(), TunnelError> {
    let mut seen = std::collections::HashSet::new();
    for peer in &config.peers {
        if !seen.insert(peer.public_key) {
            return Err(TunnelError::InvalidConfig(format!(
                "peer {} is listed twice",
                peer.public_key
            )));
        }
        if peer.public_key == config.private_key.public_key() {
            return Err(TunnelError::InvalidConfig(
                "a peer has this tunnel's own public key".into(),
            ));
        }
    }
    if config.mtu < 576 {
        return Err(TunnelError::InvalidConfig(format!(
            "MTU {} is below the IPv4 minimum of 576",
            config.mtu
        )));
    }
    Ok(())
}

impl Tunnel {
    /// Creates the TUN interface `config.interface_name` in the calling
    /// thread's network namespace, binds the UDP port, assigns
    /// `config.addresses`, sets the MTU, brings the link up, adds
    /// `config.routes` (main table, via the interface) and starts processing
    /// packets on the current tokio runtime. Peers with an endpoint get a
    /// handshake initiation right away.
    pub async fn start(config: TunnelConfig) -> Result<Tunnel, TunnelError> {
        validate(&config)?;
        let name = config.interface_name.clone();
        // --- Everything namespace-bound is created before the first await.
        let crate::tun::OpenTun {
            file: tun,
            vnet_hdr,
        } = crate::tun::open_tun(&name).map_err(|source| TunnelError::CreateTun {
            name: name.clone(),
            source,
        })?;
        let port = config.listen_port.unwrap_or(0);
        let bind = |addr: SocketAddr| -> Result<UdpSocket, TunnelError> {
            let socket = StdUdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|_| s))
                .map_err(|source| TunnelError::Bind { port, source })?;
            UdpSocket::from_std(socket).map_err(|source| TunnelError::Bind { port, source })
        };
        let udp4 = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        let listen_port = udp4
            .local_addr()
            .map_err(|source| TunnelError::Bind { port, source })?
            .port();
        // IPv6 endpoints get a socket of their own on an ephemeral port; the
        // listening port (servers) is IPv4 only.
        let udp6 = if config
            .peers
            .iter()
            .any(|p| matches!(p.endpoint, Some(SocketAddr::V6(_))))
        {
            Some(bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))?)
        } else {
            None
        };
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| TunnelError::Netlink {
                name: name.clone(),
                message: format!("netlink socket: {e}"),
            })?;
        let tun = crate::tun::register(tun).map_err(|source| TunnelError::CreateTun {
            name: name.clone(),
            source,
        })?;
        // --- From here on the namespace no longer matters.
        let netlink_task = tokio::spawn(connection);
        let configured = configure_link(&handle, &config).await;
        netlink_task.abort();
        let ifindex = configured?;

        let static_private = config.private_key.to_static_secret();
        let static_public = boringtun::x25519::PublicKey::from(&static_private);
        let index_base: u32 = rand::random::<u32>() & 0x00ff_ffff;
        let mut peers = Vec::new();
        let mut by_key = HashMap::new();
        let mut by_index = HashMap::new();
        let mut routes = Vec::new();
        for (i, peer) in config.peers.iter().enumerate() {
            let index = (index_base.wrapping_add(i as u32)) & 0x00ff_ffff;
            let tunn = Tunn::new(
                static_private.clone(),
                peer.public_key.to_x25519(),
                peer.preshared_key.as_ref().map(|k| *k.as_bytes()),
                peer.persistent_keepalive,
                index,
                None,
            );
            by_key.insert(*peer.public_key.as_bytes(), i);
            by_index.insert(index, i);
            routes.extend(peer.allowed_ips.iter().map(|net| (net.trunc(), i)));
            peers.push(PeerState {
                public_key: peer.public_key,
                allowed_ips: peer.allowed_ips.iter().map(IpNet::trunc).collect(),
                tunn: Mutex::new(tunn),
                endpoint: RwLock::new(peer.endpoint),
                pinned: peer.endpoint.is_some() && !peer.roaming,
                reported_other_source: AtomicBool::new(false),
                rx_packets: AtomicU64::new(0),
                tx_packets: AtomicU64::new(0),
                blocked: AtomicBool::new(false),
            });
        }
        routes.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));

        let shared = Arc::new(Shared {
            name: name.clone(),
            listen_port,
            tun,
            vnet_hdr,
            coalesce: AtomicBool::new(vnet_hdr),
            udp4: BatchSocket::new(udp4),
            udp6: udp6.map(BatchSocket::new),
            static_private,
            static_public,
            peers,
            by_key,
            by_index,
            routes,
            no_route_drops: AtomicU64::new(0),
            source_drops: AtomicU64::new(0),
        });

        let (failure_tx, failure) = watch::channel(None);
        let failure_tx = Arc::new(failure_tx);
        let supervise =
            |what: &'static str,
             fut: std::pin::Pin<Box<dyn Future<Output = io::Result<()>> + Send>>| {
                let failure_tx = Arc::clone(&failure_tx);
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::warn!(tunnel = %name, task = what, error = %e, "tunnel task failed");
                        failure_tx.send_replace(Some(format!("{what}: {e}")));
                    }
                })
            };
        let workers = pool::worker_count();
        let (outbound_pool, encrypters) = outbound::start(&shared, workers);
        let (inbound_pool, decrypters) = inbound::start(&shared, workers);
        let mut tasks = vec![
            supervise(
                "interface reader",
                Box::pin(tun_to_network(Arc::clone(&shared), outbound_pool)),
            ),
            supervise(
                "udp reader",
                Box::pin(network_to_tun(
                    Arc::clone(&shared),
                    Arc::clone(&inbound_pool),
                    false,
                )),
            ),
            supervise("timers", Box::pin(timers(Arc::clone(&shared)))),
        ];
        if shared.udp6.is_some() {
            tasks.push(supervise(
                "udp6 reader",
                Box::pin(network_to_tun(Arc::clone(&shared), inbound_pool, true)),
            ));
        }
        for worker in encrypters {
            tasks.push(supervise("encrypting worker", Box::pin(worker)));
        }
        for worker in decrypters {
            tasks.push(supervise("decrypting worker", Box::pin(worker)));
        }
        tracing::info!(
            tunnel = %name,
            listen_port,
            peers = shared.peers.len(),
            crypto_workers = workers,
            tun_offloads = shared.vnet_hdr,
            udp_gso = shared.udp4.gso(),
            udp_gro = shared.udp4.gro(),
            "WireGuard tunnel up"
        );
        Ok(Tunnel {
            shared,
            tasks,
            failure,
            ifindex,
        })
    }

    /// The interface name.
    pub fn interface_name(&self) -> &str {
        &self.shared.name
    }

    /// The interface index in its namespace.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The UDP port this tunnel listens on (the configured one, or the
    /// ephemeral port it got).
    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// This tunnel's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.shared.static_public.to_bytes())
    }

    /// A snapshot of the counters and handshake state.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            interface_name: self.shared.name.clone(),
            listen_port: self.shared.listen_port,
            peers: self
                .shared
                .peers
                .iter()
                .map(|peer| {
                    let (last_handshake, tx_bytes, rx_bytes, _loss, rtt_ms) = peer.tunn().stats();
                    PeerStats {
                        public_key: peer.public_key,
                        endpoint: peer.endpoint(),
                        last_handshake,
                        rx_bytes: rx_bytes as u64,
                        tx_bytes: tx_bytes as u64,
                        rx_packets: peer.rx_packets.load(Ordering::Relaxed),
                        tx_packets: peer.tx_packets.load(Ordering::Relaxed),
                        rtt_ms,
                    }
                })
                .collect(),
            no_route_drops: self.shared.no_route_drops.load(Ordering::Relaxed),
            source_drops: self.shared.source_drops.load(Ordering::Relaxed),
            offloads: Offloads {
                tun_vnet_hdr: self.shared.vnet_hdr,
                udp_gso: self.shared.udp4.gso(),
                udp_gro: self.shared.udp4.gro(),
            },
        }
    }

    /// Blocks (or unblocks) all traffic with one peer, as if the path to it
    /// were cut: datagrams from it are ignored and none are sent to it, while
    /// the interface and the other peers keep working. A lab provider uses
    /// this to take down one gateway's tunnel. Returns `false` when no such
    /// peer is configured.
    pub fn set_peer_blocked(&self, public_key: &PublicKey, blocked: bool) -> bool {
        match self.shared.by_key.get(public_key.as_bytes()) {
            Some(&i) => {
                self.shared.peers[i]
                    .blocked
                    .store(blocked, Ordering::Relaxed);
                tracing::info!(tunnel = %self.shared.name, peer = %public_key, blocked, "peer traffic switched");
                true
            }
            None => false,
        }
    }

    /// The failure that stopped packet processing, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves when packet processing fails (e.g. the interface was deleted
    /// from outside); never resolves for a healthy tunnel.
    pub async fn failed(&self) -> TunnelError {
        let mut failure = self.failure.clone();
        let message = match failure.wait_for(Option::is_some).await {
            Ok(m) => m.clone().unwrap_or_default(),
            Err(_) => "tunnel tasks ended".to_string(),
        };
        TunnelError::Failed {
            name: self.shared.name.clone(),
            message,
        }
    }

    /// Stops the tunnel and removes the interface (same as dropping it).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!(tunnel = %self.shared.name, "WireGuard tunnel stopped");
    }
}

/// Runs a tunnel (typically a lab provider's server) until `shutdown`
/// resolves or the tunnel fails; the interface is removed on return.
pub async fn run_tunnel_until(
    config: TunnelConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TunnelError> {
    let tunnel = Tunnel::start(config).await?;
    tokio::select! {
        _ = shutdown => Ok(()),
        e = tunnel.failed() => Err(e),
    }
}

async fn configure_link(
    handle: &rtnetlink::Handle,
    config: &TunnelConfig,
) -> Result<u32, TunnelError> {
    let name = &config.interface_name;
    let err = |what: &str, e: rtnetlink::Error| TunnelError::Netlink {
        name: name.clone(),
        message: format!("{what}: {e}"),
    };
    let link = handle
        .link()
        .get()
        .match_name(name.clone())
        .execute()
        .try_next()
        .await
        .map_err(|e| err("look up link", e))?
        .ok_or_else(|| TunnelError::Netlink {
            name: name.clone(),
            message: "interface vanished right after creation".into(),
        })?;
    let index = link.header.index;
    handle
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(index)
                .mtu(u32::from(config.mtu))
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| err("set MTU and up", e))?;
    for address in &config.addresses {
        handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("add address {address}"), e))?;
    }
    for route in &config.routes {
        let route = route.trunc();
        let message = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.addr(), route.prefix_len())
            .map_err(|e| TunnelError::InvalidConfig(format!("route {route}: {e}")))?
            .output_interface(index)
            .build();
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("add route {route}"), e))?;
    }
    Ok(index)
}

/// Handshake initiation at start, then boringtun's timers: rekeying,
/// retransmitted handshakes, keepalives, session expiry.
async fn timers(shared: Arc<Shared>) -> io::Result<()> {
    let mut dst = vec![0u8; BUFFER_SIZE];
    for peer in shared.peers.iter().filter(|p| p.endpoint().is_some()) {
        let out = match peer.tunn().format_handshake_initiation(&mut dst, false) {
            TunnResult::WriteToNetwork(out) => out.len(),
            _ => continue,
        };
        shared.send(peer, &dst[..out]).await;
    }
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(4) && !crate::tun::is_attached(shared.tun.get_ref()) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the interface was deleted",
            ));
        }
        for peer in &shared.peers {
            let out = match peer.tunn().update_timers(&mut dst) {
                TunnResult::WriteToNetwork(out) => out.len(),
                _ => continue,
            };
            shared.send(peer, &dst[..out]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pinned_endpoint_ignores_other_sources() {
        let configured = Some(addr("198.51.100.1:51820"));
        assert_eq!(
            endpoint_change(true, configured, addr("198.51.100.9:51820")),
            EndpointChange::Ignored
        );
        assert_eq!(
            endpoint_change(true, configured, addr("198.51.100.1:51821")),
            EndpointChange::Ignored,
            "another port is another endpoint"
        );
        assert_eq!(
            endpoint_change(true, configured, addr("198.51.100.1:51820")),
            EndpointChange::Unchanged
        );
    }

    #[test]
    fn unpinned_endpoint_learns_and_roams() {
        assert_eq!(
            endpoint_change(false, None, addr("198.51.100.2:40000")),
            EndpointChange::Roamed
        );
        assert_eq!(
            endpoint_change(
                false,
                Some(addr("198.51.100.2:40000")),
                addr("198.51.100.6:40001")
            ),
            EndpointChange::Roamed
        );
        assert_eq!(
            endpoint_change(
                false,
                Some(addr("198.51.100.2:40000")),
                addr("198.51.100.2:40000")
            ),
            EndpointChange::Unchanged
        );
    }
}
