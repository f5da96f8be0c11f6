//! The resolver's Prometheus metrics and its HTTP endpoints (`/metrics`, `/healthz`).
//!
//! Labels are low-cardinality by construction: `zone` is `cluster` or `upstream`, `result`
//! one of a fixed set; query names never become labels.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hickory_proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::split::Route;

/// Labels of the query counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// `cluster` or `upstream`.
    pub zone: &'static str,
    /// `noerror`, `nxdomain`, `servfail`, `refused`, `other` (any other response code)
    /// or `failed` (no answer from any server: timeout or connection error).
    pub result: &'static str,
}

/// Labels of the per-zone metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// `cluster` or `upstream`.
    pub zone: &'static str,
}

/// How one query ended, for the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this code was sent.
    Answered(ResponseCode),
    /// No server answered; SERVFAIL was sent.
    Failed,
}

impl Outcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Answered(ResponseCode::NoError) => "noerror",
            Outcome::Answered(ResponseCode::NXDomain) => "nxdomain",
            Outcome::Answered(ResponseCode::ServFail) => "servfail",
            Outcome::Answered(ResponseCode::Refused) => "refused",
            Outcome::Answered(_) => "other",
            Outcome::Failed => "failed",
        }
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~1.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

/// The resolver's metrics, all under `vpno_dns_`.
#[derive(Debug)]
pub struct DnsMetrics {
    /// Queries answered, by zone and result.
    pub queries: Family<QueryLabels, Counter>,
    /// Seconds from receiving a query to having its answer, by zone.
    pub duration: Family<ZoneLabel, Histogram, fn() -> Histogram>,
    /// Answers served from the cache, by zone.
    pub cache_hits: Family<ZoneLabel, Counter>,
    /// Queries forwarded because the cache had no answer, by zone.
    pub cache_misses: Family<ZoneLabel, Counter>,
    /// Requests refused before routing (not a single standard query).
    pub malformed: Counter,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            queries: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            malformed: Counter::default(),
        }
    }
}

impl DnsMetrics {
    /// Registers every metric in `registry` under `vpno_dns_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vpno_dns");
        r.register(
            "queries",
            "DNS queries answered, by zone and result",
            self.queries.clone(),
        );
        r.register(
            "query_duration_seconds",
            "Time from receiving a DNS query to having its answer",
            self.duration.clone(),
        );
        r.register(
            "cache_hits",
            "DNS answers served from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "DNS queries forwarded after a cache miss",
            self.cache_misses.clone(),
        );
        r.register(
            "malformed_requests",
            "DNS requests refused before routing (not exactly one standard query)",
            self.malformed.clone(),
        );
    }

    /// Records one answered query.
    pub fn record(&self, route: Route, outcome: Outcome, seconds: f64) {
        let zone = route.label();
        self.queries
            .get_or_create(&QueryLabels {
                zone,
                result: outcome.label(),
            })
            .inc();
        self.duration
            .get_or_create(&ZoneLabel { zone })
            .observe(seconds);
    }

    /// Records a cache hit or miss.
    pub fn record_cache(&self, route: Route, hit: bool) {
        let family = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        family
            .get_or_create(&ZoneLabel {
                zone: route.label(),
            })
            .inc();
    }
}

/// The axum router with `/metrics` and `/healthz`.
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_a_fixed_label_set() {
        assert_eq!(Outcome::Answered(ResponseCode::NoError).label(), "noerror");
        assert_eq!(
            Outcome::Answered(ResponseCode::NXDomain).label(),
            "nxdomain"
        );
        assert_eq!(
            Outcome::Answered(ResponseCode::ServFail).label(),
            "servfail"
        );
        assert_eq!(Outcome::Answered(ResponseCode::Refused).label(), "refused");
        assert_eq!(Outcome::Answered(ResponseCode::FormErr).label(), "other");
        assert_eq!(Outcome::Failed.label(), "failed");
    }

    #[test]
    fn recorded_queries_appear_with_zone_and_result_labels() {
        let m = DnsMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.record(
            Route::Cluster,
            Outcome::Answered(ResponseCode::NoError),
            0.001,
        );
        m.record(Route::Upstream, Outcome::Failed, 0.5);
        m.record_cache(Route::Upstream, true);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"vpno_dns_queries_total{zone="cluster",result="noerror"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vpno_dns_queries_total{zone="upstream",result="failed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vpno_dns_cache_hits_total{zone="upstream"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vpno_dns_query_duration_seconds_count{zone="cluster"} 1"#),
            "{text}"
        );
    }
}
