//! Prometheus metrics: per controller `vpno_<controller>_reconcile_counter`,
//! `_action_counter`, `_read_duration_seconds`, `_write_duration_seconds`,
//! and `vpno_http_*` for the metrics server. Labels never hold object names.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `_reconcile_counter`: outcome (`ok`/`error`) and a fixed error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
    /// Error kind (`none` on success).
    pub error: &'static str,
}

/// Labels of `_action_counter`: what a reconcile did (`assign`, `evict`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// A fixed action name.
    pub action: &'static str,
}

/// Labels of the read/write duration histograms: the kind of object touched.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoLabels {
    /// Kind of the object read or written.
    pub kind: &'static str,
}

/// Labels of `vpno_http_requests`: route and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of the fixed routes (`/metrics`, `/healthz`, `/readyz`, `other`).
    pub path: &'static str,
    /// HTTP status code.
    pub status: u16,
}

fn io_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// The four metric families of one controller.
#[derive(Debug)]
pub struct ControllerMetrics {
    reconcile: Family<ReconcileLabels, Counter>,
    action: Family<ActionLabels, Counter>,
    read: Family<IoLabels, Histogram>,
    write: Family<IoLabels, Histogram>,
}

impl ControllerMetrics {
    fn register(registry: &mut Registry, controller: &str) -> Self {
        let m = ControllerMetrics {
            reconcile: Family::default(),
            action: Family::default(),
            read: Family::new_with_constructor(io_histogram as fn() -> Histogram),
            write: Family::new_with_constructor(io_histogram as fn() -> Histogram),
        };
        // Known label values are exposed from the start (at zero), so that
        // dashboards and alerts see every family before its first call.
        for kind in [
            "Mask",
            "MaskConsumer",
            "MaskProvider",
            "MaskReservation",
            "Secret",
            "Pod",
        ] {
            let _ = m.read.get_or_create(&IoLabels { kind });
            let _ = m.write.get_or_create(&IoLabels { kind });
        }
        let p = format!("vpno_{controller}");
        registry.register(
            format!("{p}_reconcile_counter"),
            format!("Reconciles of {controller} objects"),
            m.reconcile.clone(),
        );
        registry.register(
            format!("{p}_action_counter"),
            format!("Actions taken by the {controller} controller"),
            m.action.clone(),
        );
        registry.register(
            format!("{p}_read_duration_seconds"),
            format!("API reads of the {controller} controller"),
            m.read.clone(),
        );
        registry.register(
            format!("{p}_write_duration_seconds"),
            format!("API writes of the {controller} controller"),
            m.write.clone(),
        );
        m
    }

    /// Counts one finished reconcile.
    pub fn reconciled(&self, error: Option<&'static str>) {
        let labels = match error {
            None => ReconcileLabels {
                outcome: "ok",
                error: "none",
            },
            Some(e) => ReconcileLabels {
                outcome: "error",
                error: e,
            },
        };
        self.reconcile.get_or_create(&labels).inc();
    }

    /// Counts one action.
    pub fn action(&self, action: &'static str) {
        self.action.get_or_create(&ActionLabels { action }).inc();
    }

    /// Runs an API read and records its duration.
    pub async fn read<T>(&self, kind: &'static str, f: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.read
            .get_or_create(&IoLabels { kind })
            .observe(start.elapsed().as_secs_f64());
        out
    }

    /// Runs an API write and records its duration.
    pub async fn write<T>(&self, kind: &'static str, f: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.write
            .get_or_create(&IoLabels { kind })
            .observe(start.elapsed().as_secs_f64());
        out
    }

    /// Number of times `action` was taken so far (for tests and benchmarks).
    pub fn action_count(&self, action: &'static str) -> u64 {
        self.action.get_or_create(&ActionLabels { action }).get()
    }

    /// Number of reconciles counted so far with this outcome (for tests and benchmarks).
    pub fn reconcile_count(&self, outcome: &'static str) -> u64 {
        let mut total = 0;
        for error in [
            "none",
            "conflict",
            "not_found",
            "api",
            "transport",
            "finalizer",
            "missing_field",
        ] {
            if (outcome == "ok") != (error == "none") {
                continue;
            }
            total += self
                .reconcile
                .get_or_create(&ReconcileLabels { outcome, error })
                .get();
        }
        total
    }
}

/// Labels of `vpno_http_request_duration_seconds`: the route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// One of the fixed routes (`/metrics`, `/healthz`, `/readyz`, `other`).
    pub path: &'static str,
}

/// Metrics of the HTTP server.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Family<PathLabels, Histogram>,
}

impl HttpMetrics {
    /// Records one served request.
    pub fn observe(&self, path: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&HttpLabels { path, status })
            .inc();
        self.duration
            .get_or_create(&PathLabels { path })
            .observe(seconds);
    }
}

/// All metrics of the controller process, with their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `vpno_mask_*`.
    pub mask: ControllerMetrics,
    /// `vpno_maskconsumer_*`.
    pub consumer: ControllerMetrics,
    /// `vpno_maskprovider_*`.
    pub provider: ControllerMetrics,
    /// `vpno_maskreservation_*`.
    pub reservation: ControllerMetrics,
    /// `vpno_http_*`.
    pub http: HttpMetrics,
    /// `vpno_watch_channel_full_total{kind}`: times a watch's change had to
    /// wait because a controller's trigger channel was full.
    pub watch_channel_full: Family<KindLabels, Counter>,
    /// `vpno_provider_slots{provider,state}`: used and free slots per
    /// provider (`namespace/name`; providers are few and chosen by the
    /// cluster's operator, so the name is an acceptable label).
    pub provider_slots: Family<SlotLabels, Gauge>,
}

/// Labels of `vpno_provider_slots`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `namespace/name` of the provider.
    pub provider: String,
    /// `used` or `free`.
    pub state: &'static str,
}

/// Labels of the watch metrics: the watched kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Kind of the watched objects.
    pub kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mask = ControllerMetrics::register(&mut registry, "mask");
        let consumer = ControllerMetrics::register(&mut registry, "maskconsumer");
        let provider = ControllerMetrics::register(&mut registry, "maskprovider");
        let reservation = ControllerMetrics::register(&mut registry, "maskreservation");
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(io_histogram as fn() -> Histogram),
        };
        registry.register(
            "vpno_http_requests",
            "HTTP requests served",
            http.requests.clone(),
        );
        registry.register(
            "vpno_http_request_duration_seconds",
            "HTTP request durations",
            http.duration.clone(),
        );
        let watch_channel_full = Family::<KindLabels, Counter>::default();
        registry.register(
            "vpno_watch_channel_full",
            "Watch changes that waited for a full controller trigger channel",
            watch_channel_full.clone(),
        );
        let provider_slots = Family::<SlotLabels, Gauge>::default();
        registry.register(
            "vpno_provider_slots",
            "Slots of each provider by state (used, free)",
            provider_slots.clone(),
        );
        Metrics {
            registry,
            watch_channel_full,
            provider_slots,
            mask,
            consumer,
            provider,
            reservation,
            http,
        }
    }
}

impl Metrics {
    /// Shows `used` and `free` slots of `provider`; `None` removes its series
    /// (the provider is gone).
    pub fn show_slots(&self, provider: &str, counts: Option<(u32, u32)>) {
        for (state, value) in [("used", counts.map(|c| c.0)), ("free", counts.map(|c| c.1))] {
            let labels = SlotLabels {
                provider: provider.to_string(),
                state,
            };
            match value {
                Some(v) => {
                    self.provider_slots.get_or_create(&labels).set(i64::from(v));
                }
                None => {
                    self.provider_slots.remove(&labels);
                }
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_vpno_names() {
        let m = Metrics::default();
        m.consumer.reconciled(None);
        m.consumer.action("assign");
        m.http.observe("/metrics", 200, 0.01);
        m.mask
            .read
            .get_or_create(&IoLabels { kind: "Mask" })
            .observe(0.002);
        m.provider
            .write
            .get_or_create(&IoLabels { kind: "Pod" })
            .observe(0.002);
        m.reservation.reconciled(Some("conflict"));
        let text = m.encode();
        for name in [
            "vpno_maskconsumer_reconcile_counter_total{outcome=\"ok\",error=\"none\"} 1",
            "vpno_maskconsumer_action_counter_total{action=\"assign\"} 1",
            "vpno_http_requests_total{path=\"/metrics\",status=\"200\"} 1",
            "# TYPE vpno_mask_read_duration_seconds histogram",
            "# TYPE vpno_maskprovider_write_duration_seconds histogram",
            "vpno_maskreservation_reconcile_counter_total{outcome=\"error\",error=\"conflict\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert_eq!(m.consumer.reconcile_count("ok"), 1);
    }

    #[test]
    fn provider_slots_show_used_and_free_until_the_provider_goes() {
        let m = Metrics::default();
        m.show_slots("vpn/nord", Some((3, 7)));
        let text = m.encode();
        assert!(
            text.contains("vpno_provider_slots{provider=\"vpn/nord\",state=\"used\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("vpno_provider_slots{provider=\"vpn/nord\",state=\"free\"} 7"),
            "{text}"
        );
        m.show_slots("vpn/nord", None);
        assert!(!m.encode().contains("provider=\"vpn/nord\""));
    }
}
