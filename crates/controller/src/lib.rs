//! Reconcilers for the `vpn.beebs.dev/v1` Mask API: `MaskProvider`, `Mask`,
//! `MaskConsumer` and `MaskReservation`, and the `MaskGateway` controller
//! built on them (a Mask per gateway replica; see the `gateway` module).
//!
//! How the guarantees are kept:
//! - A slot is taken only by *creating* the MaskReservation `<provider>-<slot>`
//!   (slot < maxSlots); a 409 means someone holds it, so any number of
//!   controller replicas can never over-assign.
//! - Every MaskConsumer carries the finalizer `vpn.beebs.dev/release-slot`.
//!   When it is deleted, the controller deletes the workloads it owns directly
//!   (Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, Pods) with
//!   foreground propagation, so the garbage collector removes their
//!   ReplicaSets and Pods first. The slot stays held while any such owned
//!   object, or any unfinished Pod in the namespace that references the
//!   credentials Secret (envFrom, env secretKeyRef, secret or projected
//!   volume), remains; then the controller deletes the credentials Secret,
//!   the reservation, and lets the consumer go. Deleted owned Pods wake the
//!   consumer; the other kinds are polled every second while it waits. The
//!   consumer's Terminating status message names what is holding the slot.
//! - A reservation's deletion wakes the unassigned consumers that provider
//!   could serve (watch event, no polling), so a waiting Mask gets the slot at once.
//! - A consumer that lost its slot (provider deleted, reservation removed,
//!   slot at or above a lowered maxSlots) is deleted, with its Pods; its Mask
//!   gets a fresh consumer, assigned wherever a slot is free.
//! - Providers carry `vpn.beebs.dev/unassign-consumers`: deleting one deletes
//!   its consumers and waits until none of its reservations is left.
//! - Objects the original vpn-operator left carry its finalizer
//!   `vpn.beebs.dev/finalizer` ([`plan::LEGACY_FINALIZER`]): live ones trade
//!   it for ours (or none), deleted ones get our release work and then lose it.
//!   Credentials copies carry `vpn.beebs.dev/owner: <provider-uid>` as the
//!   original's do.
//! - Reservations whose consumer is gone or is another object (uid) are reclaimed
//!   after a check against the API server; reservations made before a crash
//!   are adopted by their consumer.
//!
//! The decisions (which provider and slot a consumer gets, which consumers a
//! shrunk provider evicts, which phase a provider shows, what the
//! verification Pod looks like) are pure functions in [`plan`]; the
//! reconcilers in this crate only read state, call them, and write results.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod consumer;
mod context;
mod effect;
mod error;
mod executor;
mod gateway;
mod index;
mod mask;
pub mod metrics;
pub mod plan;
mod provider;
mod reservation;
mod runtime;
mod server;
mod triggers;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use error::ControllerError;
pub use gateway::PodImages;
pub use metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Container images used by provider verification Pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyImages {
    /// The gluetun image that runs the VPN client (container `vpn`).
    pub gluetun: String,
    /// An image with `curl` and a POSIX shell (containers `init` and `probe`).
    pub curl: String,
}

impl Default for VerifyImages {
    fn default() -> Self {
        VerifyImages {
            gluetun: "qmcgaw/gluetun:latest".into(),
            curl: "curlimages/curl:8.11.1".into(),
        }
    }
}

/// Command-line arguments of `vpn-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Namespaces to watch (comma-separated); absent means all namespaces.
    #[arg(long = "namespace", env = "VPNO_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "VPNO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Path of a kubeconfig file; absent means `$KUBECONFIG`, `~/.kube/config` or in-cluster config.
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Image of the VPN container of verification Pods.
    #[arg(
        long,
        env = "VPNO_VERIFY_GLUETUN_IMAGE",
        default_value = "qmcgaw/gluetun:latest"
    )]
    pub verify_gluetun_image: String,
    /// Image (with curl and sh) of the `init` and `probe` containers of verification Pods.
    #[arg(
        long,
        env = "VPNO_VERIFY_CURL_IMAGE",
        default_value = "curlimages/curl:8.11.1"
    )]
    pub verify_curl_image: String,
    /// URL that answers with the caller's public IP, used by verification Pods.
    #[arg(
        long,
        env = "VPNO_VERIFY_IP_URL",
        default_value = "https://api.ipify.org"
    )]
    pub verify_ip_url: String,
    /// Verification timeout for providers whose `verify.timeout` is unset (Go duration).
    #[arg(long, env = "VPNO_VERIFY_TIMEOUT", default_value = "1m", value_parser = vpno_sys::positive_duration)]
    pub verify_timeout: Duration,
    /// Name under which Events are reported (the `reportingController`).
    #[arg(long, env = "VPNO_REPORTER", default_value = "vpn-operator")]
    pub reporter: String,
    /// The `vpn-operator` image of MaskGateways' gateway and router Pods
    /// (usually the controller's own).
    #[arg(
        long,
        env = "VPNO_GATEWAY_IMAGE",
        default_value = "localhost/vpn-operator:dev"
    )]
    pub gateway_image: String,
    /// Pull policy of those Pods' containers (`Never` for images imported into the nodes).
    #[arg(
        long,
        env = "VPNO_GATEWAY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub gateway_image_pull_policy: String,
}

/// Everything [`run_with_client`] needs besides a client.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespaces watched; empty means all namespaces. Masks and providers may
    /// be in different namespaces of this set.
    pub namespaces: Vec<String>,
    /// Images of the verification Pods.
    pub verify_images: VerifyImages,
    /// URL answering with the caller's public IP (used by `init` and `probe`).
    pub verify_ip_url: String,
    /// Verification timeout used when a provider sets none.
    pub default_verify_timeout: Duration,
    /// Reporter name of Events.
    pub reporter: String,
    /// Image of MaskGateways' gateway and router Pods.
    pub pod_images: PodImages,
    /// Metric families the controllers record into.
    pub metrics: Arc<Metrics>,
    /// Set to `true` once every watch has listed its objects and the
    /// controllers run (drives `/readyz`).
    pub synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            namespaces: Vec::new(),
            verify_images: VerifyImages::default(),
            verify_ip_url: "https://api.ipify.org".into(),
            default_verify_timeout: Duration::from_secs(60),
            reporter: "vpn-operator".into(),
            pod_images: PodImages::default(),
            metrics: Arc::new(Metrics::default()),
            synced: Arc::default(),
        }
    }
}

impl ControllerConfig {
    /// A configuration watching only `namespaces` (empty = all), defaults otherwise.
    pub fn for_namespaces<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        ControllerConfig {
            namespaces: namespaces.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// Runs the five controllers and the metrics server until SIGTERM or ctrl-c.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let client = runtime::client_from(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let config = ControllerConfig {
        namespaces: args.namespaces.clone(),
        verify_images: VerifyImages {
            gluetun: args.verify_gluetun_image.clone(),
            curl: args.verify_curl_image.clone(),
        },
        verify_ip_url: args.verify_ip_url.clone(),
        default_verify_timeout: args.verify_timeout,
        reporter: args.reporter.clone(),
        pod_images: PodImages {
            agent: args.gateway_image.clone(),
            pull_policy: args.gateway_image_pull_policy.clone(),
        },
        metrics: metrics.clone(),
        synced: Arc::default(),
    };
    let shutdown = CancellationToken::new();
    let ready = server::Readiness(config.synced.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: args.metrics_addr,
            source,
        })?;
    tracing::info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    let srv = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    ));
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        vpno_sys::shutdown_signal().await;
        tracing::info!("shutdown signal received");
        signal_token.cancel();
    });
    let result = run_with_client(client, config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = srv.await;
    result
}

/// Runs the five controllers with `client` until `shutdown` is cancelled.
/// Used by `run`, by tests, benchmarks and other components that embed the controller.
pub async fn run_with_client(
    client: kube::Client,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    runtime::run_controllers(client, config, shutdown).await
}
