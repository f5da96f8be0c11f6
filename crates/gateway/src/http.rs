//! HTTP endpoints: `/healthz` (liveness: the agent loop runs), `/readyz`
//! (readiness: the tunnel passes traffic now; routers probe it),
//! `/public-ip`, `/metrics`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::Shared;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/public-ip", get(public_ip))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// 200 while the agent loop keeps ticking, whatever the tunnel does (a
/// down tunnel is a reason not to route through the gateway, not to
/// restart it).
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let since = shared
        .last_tick
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .elapsed();
    let alive = since <= shared.alive_within;
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "alive": alive,
        "since_last_tick_seconds": since.as_secs_f64(),
        "limit_seconds": shared.alive_within.as_secs_f64(),
    });
    (code, axum::Json(body)).into_response()
}

/// 200 only while the tunnel passes traffic (the health verdict).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let code = if status.verdict.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(status)).into_response()
}

async fn public_ip(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match status.public_ip {
        Some(ip) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{ip}\n")).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "error": "public_ip_unknown",
                "message": "no successful probe through the tunnel (configure --probe-url; see /readyz)",
                "reasons": status.verdict.reasons,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": "not_found", "message": "endpoints: /healthz, /readyz, /public-ip, /metrics"}),
        ),
    )
        .into_response()
}
