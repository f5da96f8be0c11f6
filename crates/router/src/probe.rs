//! HTTP health probes of the gateways' agents.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// Result of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Whether the gateway answered 200 within the timeout.
    pub ok: bool,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Round-trip time in milliseconds.
    pub latency_ms: f64,
}

/// Probes `http://<gateway>:<port><path>`; fresh connection every time so a
/// probe exercises the path to the gateway, not a pooled socket.
#[derive(Debug, Clone)]
pub struct HealthProber {
    client: Client<HttpConnector, Empty<Bytes>>,
    port: u16,
    path: String,
    timeout: Duration,
}

impl HealthProber {
    /// A prober for the given port, path and timeout.
    pub fn new(port: u16, path: &str, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Self {
            client,
            port,
            path,
            timeout,
        }
    }

    /// The probed URL of a gateway.
    pub fn url(&self, gateway: Ipv4Addr) -> String {
        format!("http://{gateway}:{}{}", self.port, self.path)
    }

    /// Probes one gateway.
    pub async fn probe(&self, gateway: Ipv4Addr) -> ProbeResult {
        let started = Instant::now();
        let outcome = match self.url(gateway).parse::<hyper::Uri>() {
            Err(e) => Err(format!("bad health URL: {e}")),
            Ok(uri) => match tokio::time::timeout(self.timeout, self.client.get(uri)).await {
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                Ok(Err(e)) => Err(format!("request failed: {}", error_chain(&e))),
                Ok(Ok(resp)) => Ok(resp.status().as_u16()),
            },
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(200) => ProbeResult {
                ok: true,
                status: Some(200),
                error: None,
                latency_ms,
            },
            Ok(s) => ProbeResult {
                ok: false,
                status: Some(s),
                error: Some(format!("HTTP status {s}")),
                latency_ms,
            },
            Err(e) => ProbeResult {
                ok: false,
                status: None,
                error: Some(e),
                latency_ms,
            },
        }
    }
}

/// `error: cause: cause` (hyper's top-level errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
