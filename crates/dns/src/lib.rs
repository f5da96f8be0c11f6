//! `vpn-operator dns`: the split DNS resolver for opted-in pods.
//!
//! Names in the cluster domain (and the reverse zones of the pod and service ranges)
//! are forwarded to the cluster DNS; every other name to the configured upstreams,
//! which sit behind the VPN, so a pod's look-ups never reach the node's resolver.
//! Answers are cached (bounded in entries and TTL); `/metrics` and `/healthz` are
//! served over HTTP.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod handler;
pub mod metrics;
pub mod split;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{NameServerPool, PoolContext, ResponseCache, TlsConfig, TtlConfig};
use hickory_server::Server;
use ipnet::IpNet;
use prometheus_client::registry::Registry;

use crate::handler::{Pools, SplitHandler};
use crate::metrics::DnsMetrics;
use crate::split::{ClusterZones, ZoneError};
use crate::upstream::ServerSpec;

/// Flags of `vpn-operator dns`.
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Address to answer DNS on, UDP and TCP (the same port for both).
    #[arg(long, default_value = "0.0.0.0:53", env = "VPNO_DNS_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the HTTP server with /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9153", env = "VPNO_DNS_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// The cluster domain; it and every name below it go to the cluster DNS.
    #[arg(long, default_value = "cluster.local", env = "VPNO_DNS_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// Cluster DNS servers (kube-dns Service IP), comma-separated or repeated; syntax as --upstream.
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        env = "VPNO_DNS_CLUSTER_DNS"
    )]
    pub cluster_dns: Vec<ServerSpec>,
    /// Pod and Service ranges whose reverse (PTR) zones also go to the cluster DNS.
    #[arg(
        long = "cluster-cidr",
        value_delimiter = ',',
        env = "VPNO_DNS_CLUSTER_CIDRS"
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Upstream resolvers for every other name: IP[:PORT] (UDP, TCP on truncation),
    /// udp://IP[:PORT], tcp://IP[:PORT] or tls://IP[:PORT]@SERVER_NAME (DNS over TLS, port 853).
    #[arg(
        long = "upstream",
        required = true,
        value_delimiter = ',',
        env = "VPNO_DNS_UPSTREAMS"
    )]
    pub upstreams: Vec<ServerSpec>,
    /// PEM file of extra CA certificates trusted for tls:// upstreams (besides the system store).
    #[arg(long, env = "VPNO_DNS_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Most answers kept in the cache (0 turns caching off).
    #[arg(long, default_value_t = 10_000, env = "VPNO_DNS_CACHE_SIZE")]
    pub cache_size: u64,
    /// Longest time, in seconds, a positive answer is cached, whatever its TTL.
    #[arg(long, default_value_t = 300, env = "VPNO_DNS_CACHE_MAX_TTL")]
    pub cache_max_ttl: u64,
    /// Longest time, in seconds, a negative answer (NXDOMAIN, no data) is cached.
    #[arg(long, default_value_t = 30, env = "VPNO_DNS_CACHE_NEGATIVE_MAX_TTL")]
    pub cache_negative_max_ttl: u64,
    /// Seconds to wait for one server before trying the next.
    #[arg(long, default_value_t = 2, env = "VPNO_DNS_TIMEOUT")]
    pub timeout: u64,
}

/// Why the resolver cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// A cluster zone is invalid.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The DNS server stopped with an error.
    #[error("DNS server: {0}")]
    Server(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ResolverError {
    let what = what.into();
    move |source| ResolverError::Io { what, source }
}

/// A bound resolver, not yet serving.
pub struct Resolver {
    server: Server<SplitHandler>,
    http: tokio::net::TcpListener,
    registry: Arc<Registry>,
    dns_addr: SocketAddr,
    http_addr: SocketAddr,
}

/// Binds UDP and then TCP on the same port. With port 0 the kernel picks
/// the UDP port, and that TCP port may be taken by someone else: then
/// another port is tried (a few times), rather than failing start-up.
async fn bind_dns(
    listen: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr), ResolverError> {
    let mut tries = if listen.port() == 0 { 8 } else { 1 };
    loop {
        tries -= 1;
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(io(format!("bind UDP {listen}")))?;
        let addr = udp.local_addr().map_err(io("UDP address"))?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            Err(e) if tries > 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(io(format!("bind TCP {addr}"))(e)),
        }
    }
}

impl Resolver {
    /// Binds the DNS sockets (UDP, then TCP on the same port) and the HTTP listener.
    pub async fn bind(args: &DnsArgs) -> Result<Self, ResolverError> {
        let zones = ClusterZones::new(&args.cluster_domain, &args.cluster_cidrs)?;
        let metrics = Arc::new(DnsMetrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let opts = resolver_opts(args);
        let cache = ResponseCache::new(args.cache_size, TtlConfig::from_opts(&opts));
        let tls = tls_config(args.tls_ca_file.as_deref())?;
        let cx = Arc::new(PoolContext::new(opts, tls));
        let pool = |servers: &[ServerSpec]| {
            NameServerPool::from_config(
                servers.iter().map(ServerSpec::name_server_config),
                cx.clone(),
                TokioRuntimeProvider::new(),
            )
        };
        let pools = Pools {
            cluster: pool(&args.cluster_dns),
            upstream: pool(&args.upstreams),
        };
        let (udp, tcp, dns_addr) = bind_dns(args.listen).await?;
        let http = tokio::net::TcpListener::bind(args.metrics_listen)
            .await
            .map_err(io(format!("bind HTTP {}", args.metrics_listen)))?;
        let http_addr = http.local_addr().map_err(io("HTTP address"))?;
        let mut server = Server::new(SplitHandler::new(zones, pools, cache, metrics));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64);
        Ok(Resolver {
            server,
            http,
            registry: Arc::new(registry),
            dns_addr,
            http_addr,
        })
    }

    /// The address DNS is answered on (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The address of `/metrics` and `/healthz`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` resolves, then stops both servers.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ResolverError> {
        tracing::info!(dns = %self.dns_addr, http = %self.http_addr, "DNS resolver listening");
        let token = self.server.shutdown_token().clone();
        let app = metrics::app(self.registry.clone());
        let http_token = token.clone();
        let http = tokio::spawn(async move {
            axum::serve(self.http, app)
                .with_graceful_shutdown(async move { http_token.cancelled().await })
                .await
        });
        let result = tokio::select! {
            r = self.server.block_until_done() => r,
            () = shutdown => self.server.shutdown_gracefully().await,
        };
        token.cancel();
        let _ = http.await;
        tracing::info!("DNS resolver stopped");
        result.map_err(|e| ResolverError::Server(e.to_string()))
    }
}

fn resolver_opts(args: &DnsArgs) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(args.timeout.max(1));
    opts.attempts = 2;
    opts.cache_size = args.cache_size;
    opts.positive_max_ttl = Some(Duration::from_secs(args.cache_max_ttl));
    opts.negative_max_ttl = Some(Duration::from_secs(args.cache_negative_max_ttl));
    opts
}

/// The rustls client configuration for DNS over TLS: the system trust store plus
/// the CA certificates of `ca_file`, with the ring provider.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<TlsConfig, ResolverError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ResolverError::Tls(format!("reading {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ResolverError::Tls(format!(
                "no certificates in {}",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ResolverError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ResolverError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfig { config })
}

/// Runs the resolver until SIGTERM or ctrl-c.
pub async fn run(args: DnsArgs) -> Result<(), ResolverError> {
    Resolver::bind(&args)
        .await?
        .run_until(vpno_sys::shutdown_signal())
        .await
}
