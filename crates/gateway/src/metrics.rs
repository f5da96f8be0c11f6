//! Prometheus metrics of the gateway agent (`vpno_gateway_*`), all with
//! low-cardinality labels.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::{DownCause, TunnelState};

/// `direction` label: `rx` or `tx`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `rx` (from the tunnel) or `tx` (into the tunnel).
    pub direction: &'static str,
}

/// `protocol` label: `tcp`, `udp`, `icmp`, `other`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// Transport protocol.
    pub protocol: &'static str,
}

/// `result` label: `ok` or `fail`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Probe result.
    pub result: &'static str,
}

/// `reason` label of dropped packets: `killswitch`, `guard`, `output`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Which rule dropped them.
    pub reason: &'static str,
}

/// `state` label: `up`, `idle`, `down`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The tunnel state.
    pub state: &'static str,
}

/// `cause` label of a down tunnel.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// Why it is down (see `DownCause`).
    pub cause: &'static str,
}

/// Turns cumulative kernel counters into Prometheus counter increments
/// (a counter that went down — interface recreated, table re-applied —
/// restarts from its new value).
#[derive(Debug, Default)]
pub struct DeltaTracker {
    last: std::collections::HashMap<&'static str, u64>,
}

impl DeltaTracker {
    /// The increment since the previous observation of `key`.
    pub fn delta(&mut self, key: &'static str, value: u64) -> u64 {
        let previous = self.last.insert(key, value).unwrap_or(0);
        if value >= previous {
            value - previous
        } else {
            value
        }
    }
}

/// All gateway metrics and their registry.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Tunnel interface bytes.
    pub tunnel_bytes: Family<DirectionLabels, Counter>,
    /// Tunnel interface packets.
    pub tunnel_packets: Family<DirectionLabels, Counter>,
    /// Active forwarded flows (conntrack entries from the gateway network).
    pub forwarded_flows: Family<ProtocolLabels, Gauge>,
    /// Packets forwarded into the tunnel (nft counter).
    pub forwarded_packets: Counter,
    /// Packets dropped by the kill switch rules.
    pub dropped_packets: Family<ReasonLabels, Counter>,
    /// 1 while healthy.
    pub healthy: Gauge,
    /// Probes by result.
    pub probes: Family<ResultLabels, Counter>,
    /// Last probe latency.
    pub probe_latency_seconds: Gauge<f64, AtomicU64>,
    /// Age of the last WireGuard handshake (native tunnel; -1 = none).
    pub handshake_age_seconds: Gauge<f64, AtomicU64>,
    /// Completed WireGuard handshakes (native tunnel).
    pub handshakes: Counter,
    /// Times the public IP seen through the tunnel changed.
    pub public_ip_changes: Counter,
    /// 1 for the tunnel's current state (`up`, `idle`, `down`), 0 for the others.
    pub tunnel_state: Family<StateLabels, Gauge>,
    /// 1 for each cause the tunnel is down for, 0 for the others.
    pub down_causes: Family<CauseLabels, Gauge>,
}

impl GatewayMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vpno_gateway");
        let metrics = GatewayMetrics {
            tunnel_bytes: Family::default(),
            tunnel_packets: Family::default(),
            forwarded_flows: Family::default(),
            forwarded_packets: Counter::default(),
            dropped_packets: Family::default(),
            healthy: Gauge::default(),
            probes: Family::default(),
            probe_latency_seconds: Gauge::default(),
            handshake_age_seconds: Gauge::default(),
            handshakes: Counter::default(),
            public_ip_changes: Counter::default(),
            tunnel_state: Family::default(),
            down_causes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tunnel_bytes",
            "Bytes through the tunnel interface",
            metrics.tunnel_bytes.clone(),
        );
        registry.register(
            "tunnel_packets",
            "Packets through the tunnel interface",
            metrics.tunnel_packets.clone(),
        );
        registry.register(
            "forwarded_flows",
            "Active tracked flows from the gateway network",
            metrics.forwarded_flows.clone(),
        );
        registry.register(
            "forwarded_packets",
            "Packets forwarded from the gateway network into the tunnel",
            metrics.forwarded_packets.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped by the kill switch",
            metrics.dropped_packets.clone(),
        );
        registry.register(
            "healthy",
            "1 while the tunnel passes traffic",
            metrics.healthy.clone(),
        );
        registry.register(
            "probes",
            "Probes through the tunnel by result",
            metrics.probes.clone(),
        );
        registry.register(
            "probe_latency_seconds",
            "Latency of the last probe through the tunnel",
            metrics.probe_latency_seconds.clone(),
        );
        registry.register(
            "handshake_age_seconds",
            "Seconds since the last WireGuard handshake (-1: no session)",
            metrics.handshake_age_seconds.clone(),
        );
        registry.register(
            "handshakes",
            "Completed WireGuard handshakes of the native tunnel",
            metrics.handshakes.clone(),
        );
        registry.register(
            "public_ip_changes",
            "Times the public IP seen through the tunnel changed",
            metrics.public_ip_changes.clone(),
        );
        registry.register(
            "tunnel_state",
            "1 for the tunnel's state: up (passing client traffic), idle (healthy, no client traffic since the last tick), down",
            metrics.tunnel_state.clone(),
        );
        registry.register(
            "down_causes",
            "1 for each reason the tunnel is down",
            metrics.down_causes.clone(),
        );
        metrics.show_state(TunnelState::Down, &[DownCause::NoHandshake]);
        for direction in ["rx", "tx"] {
            let _ = metrics
                .tunnel_bytes
                .get_or_create(&DirectionLabels { direction });
            let _ = metrics
                .tunnel_packets
                .get_or_create(&DirectionLabels { direction });
        }
        for reason in ["killswitch", "guard", "output"] {
            let _ = metrics
                .dropped_packets
                .get_or_create(&ReasonLabels { reason });
        }
        for result in ["ok", "fail"] {
            let _ = metrics.probes.get_or_create(&ResultLabels { result });
        }
        GatewayMetrics {
            registry,
            ..metrics
        }
    }

    /// Shows `state` (one-hot) and the causes of a down tunnel (one-hot per cause).
    pub fn show_state(&self, state: TunnelState, causes: &[DownCause]) {
        for s in TunnelState::ALL {
            self.tunnel_state
                .get_or_create(&StateLabels { state: s.label() })
                .set(i64::from(s == state));
        }
        for c in DownCause::ALL {
            self.down_causes
                .get_or_create(&CauseLabels { cause: c.label() })
                .set(i64::from(causes.contains(&c)));
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_tracker_handles_resets() {
        let mut t = DeltaTracker::default();
        assert_eq!(t.delta("rx", 10), 10);
        assert_eq!(t.delta("rx", 15), 5);
        assert_eq!(t.delta("rx", 3), 3);
        assert_eq!(t.delta("tx", 1), 1);
    }

    #[test]
    fn exposition_has_the_documented_names() {
        let m = GatewayMetrics::new();
        m.tunnel_bytes
            .get_or_create(&DirectionLabels { direction: "rx" })
            .inc_by(42);
        m.healthy.set(1);
        let text = m.encode();
        for name in [
            "vpno_gateway_tunnel_bytes_total{direction=\"rx\"} 42",
            "vpno_gateway_healthy 1",
            "vpno_gateway_forwarded_packets_total",
            "vpno_gateway_dropped_packets_total{reason=\"killswitch\"}",
            "vpno_gateway_probes_total{result=\"fail\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
