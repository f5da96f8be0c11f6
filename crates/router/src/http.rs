//! The router's HTTP endpoints: `/healthz`, `/status` (JSON) and `/metrics`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use vpno_net::egress::Role;
use vpno_net::health::HealthState;

use crate::probe::ProbeResult;

/// What `/status` shows about one peer router.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Peer address.
    pub address: String,
    /// Role it last announced.
    pub role: Option<Role>,
    /// Priority it last announced.
    pub priority: Option<u8>,
    /// Milliseconds since its last heartbeat.
    pub last_heard_ms_ago: Option<u64>,
}

/// One gateway in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStatus {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Health state.
    pub state: HealthState,
    /// Whether the kernel group currently holds it.
    pub in_group: bool,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Consecutive successes.
    pub consecutive_successes: u32,
    /// The last probe.
    pub last_probe: Option<LastProbe>,
}

/// The last probe of a gateway.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    /// The result.
    #[serde(flatten)]
    pub result: ProbeResult,
    /// Milliseconds since the probe finished (at the time of the snapshot).
    pub age_ms: u64,
    /// Unix time of the probe in milliseconds.
    pub at_unix_ms: u64,
}

/// The nexthop group in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Group id.
    pub id: u32,
    /// Always `resilient`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Buckets.
    pub buckets: u16,
    /// Member gateway names.
    pub members: Vec<String>,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct RouterStatus {
    /// Active or standby.
    pub role: Role,
    /// Own priority.
    pub priority: u8,
    /// The VIP.
    pub vip: String,
    /// The other routers sharing the VIP, by address.
    pub peers: Vec<PeerStatus>,
    /// Whether heartbeats are authenticated (`--heartbeat-key-file`).
    pub heartbeat_authenticated: bool,
    /// Where the gateways come from: `static` (`--gateway`) or
    /// `kubernetes` (`--discover`) or `channel` (embedded in the lab or tests).
    pub gateway_source: &'static str,
    /// Why the gateway source last failed (e.g. no permission to watch
    /// Pods), until it delivers a set again.
    pub gateway_source_error: Option<String>,
    /// Gateways, by name.
    pub gateways: Vec<GatewayStatus>,
    /// The kernel's group, as observed after the last reconcile.
    pub nexthop_group: Option<GroupStatus>,
    /// `nexthop-group`, `unreachable` or `absent`.
    pub default_route: &'static str,
    /// Error of the last reconcile, if it failed.
    pub last_apply_error: Option<String>,
}

/// Low-cardinality labels of a result counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Why a heartbeat was rejected (low-cardinality).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unauthenticated`, `replayed` or `malformed`.
    pub reason: &'static str,
}

/// The router's Prometheus metrics.
#[derive(Debug, Default)]
pub struct RouterMetrics {
    /// Gateways configured.
    pub gateways_configured: Gauge,
    /// Gateways currently healthy.
    pub gateways_healthy: Gauge,
    /// Members of the kernel nexthop group.
    pub group_members: Gauge,
    /// 1 while this router holds the VIP.
    pub role_active: Gauge,
    /// Probes by result.
    pub probes: Family<ResultLabel, Counter>,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Role changes.
    pub role_changes: Counter,
    /// Gateway health transitions.
    pub health_changes: Counter,
    /// Heartbeats ignored, by reason.
    pub heartbeats_rejected: Family<ReasonLabel, Counter>,
    /// Changes of the gateway set (added or removed gateways).
    pub gateway_set_changes: Counter,
}

impl RouterMetrics {
    /// Registers every metric under `vpno_router_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vpno_router");
        r.register(
            "gateways_configured",
            "Gateways configured",
            self.gateways_configured.clone(),
        );
        r.register(
            "gateways_healthy",
            "Gateways currently healthy",
            self.gateways_healthy.clone(),
        );
        r.register(
            "group_members",
            "Members of the kernel nexthop group",
            self.group_members.clone(),
        );
        r.register(
            "role_active",
            "1 while this router holds the VIP",
            self.role_active.clone(),
        );
        r.register(
            "probes",
            "Gateway health probes by result",
            self.probes.clone(),
        );
        r.register(
            "reconciles",
            "Kernel reconciles by result",
            self.reconciles.clone(),
        );
        r.register(
            "role_changes",
            "Active/standby role changes",
            self.role_changes.clone(),
        );
        r.register(
            "health_changes",
            "Gateway health state transitions",
            self.health_changes.clone(),
        );
        r.register(
            "heartbeats_rejected",
            "Heartbeats ignored (unauthenticated, replayed, malformed)",
            self.heartbeats_rejected.clone(),
        );
        r.register(
            "gateway_set_changes",
            "Changes of the gateway set (gateways added or removed)",
            self.gateway_set_changes.clone(),
        );
    }
}

/// State shared between the reconcile loop and the HTTP server.
#[derive(Debug)]
pub struct Shared {
    /// Latest status snapshot.
    pub status: Mutex<RouterStatus>,
    /// Metrics.
    pub metrics: RouterMetrics,
    /// Registry the metrics live in.
    pub registry: Registry,
}

/// The axum router of the HTTP endpoints.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let error = s
        .status
        .lock()
        .expect("status lock")
        .last_apply_error
        .clone();
    match error {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("last reconcile failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    let snapshot = s.status.lock().expect("status lock").clone();
    axum::Json(snapshot).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}
