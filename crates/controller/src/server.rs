//! HTTP server for `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::error::ControllerError;
use crate::metrics::Metrics;

/// Whether the controllers have synced their caches.
#[derive(Clone, Default)]
pub(crate) struct Readiness(pub Arc<AtomicBool>);

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Readiness,
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.0.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let path = match req.uri().path() {
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        _ => "other",
    };
    let start = Instant::now();
    let res = next.run(req).await;
    s.metrics
        .http
        .observe(path, res.status().as_u16(), start.elapsed().as_secs_f64());
    res
}

/// The router of the metrics server.
pub(crate) fn router(metrics: Arc<Metrics>, ready: Readiness) -> Router {
    let state = AppState { metrics, ready };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ControllerError::Serve)
}
