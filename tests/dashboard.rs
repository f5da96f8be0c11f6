//! The Grafana dashboard (`deploy/grafana/vpn-operator.json`) is valid JSON
//! of the shape Grafana imports, and every metric its queries name is one
//! the controller, the gateway agent or the router really exports.

use std::collections::BTreeSet;

use prometheus_client::registry::Registry;

const DASHBOARD: &str = include_str!("../deploy/grafana/vpn-operator.json");

/// The metric families a text exposition declares (`# TYPE <name> <type>`).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every family the three components register. A labelled family is only
/// encoded once it has a series, so one series of each is made first.
fn exported() -> BTreeSet<String> {
    let controller = vpno_controller::Metrics::default();
    controller.show_slots("vpn/p", Some((1, 1)));
    for m in [
        &controller.mask,
        &controller.consumer,
        &controller.provider,
        &controller.reservation,
    ] {
        m.action("assign");
        m.reconciled(None);
    }
    let mut names = families(&controller.encode());
    let gateway = vpno_gateway::metrics::GatewayMetrics::new();
    let _ = gateway
        .forwarded_flows
        .get_or_create(&vpno_gateway::metrics::ProtocolLabels { protocol: "tcp" });
    names.extend(families(&gateway.encode()));
    let mut registry = Registry::default();
    let router = vpno_router::http::RouterMetrics::default();
    let _ = router
        .probes
        .get_or_create(&vpno_router::http::ResultLabel { result: "ok" });
    let _ = router
        .reconciles
        .get_or_create(&vpno_router::http::ResultLabel { result: "ok" });
    let _ = router
        .heartbeats_rejected
        .get_or_create(&vpno_router::http::ReasonLabel { reason: "replayed" });
    router.register(&mut registry);
    let mut router = String::new();
    prometheus_client::encoding::text::encode(&mut router, &registry).unwrap();
    names.extend(families(&router));
    names
}

/// `vpno_*` names in a PromQL expression, with the sample suffixes of
/// counters and histograms taken off.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("vpno_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let known = exported();
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("a panel title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for t in targets {
            let expr = t["expr"].as_str().expect("an expr");
            let names = metrics_in(expr);
            assert!(
                !names.is_empty(),
                "panel {title}: {expr} names no vpno_ metric"
            );
            for name in names {
                assert!(
                    known.contains(&name),
                    "panel {title}: {name} is not exported (known: {known:?})"
                );
                used.insert(name);
            }
        }
    }
    // What the issue asks the dashboard to show: per gateway up/idle/down,
    // throughput, flows, failovers.
    for needed in [
        "vpno_gateway_tunnel_state",
        "vpno_gateway_tunnel_bytes",
        "vpno_gateway_forwarded_flows",
        "vpno_router_role_changes",
        "vpno_router_health_changes",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metrics_in("sum(rate(vpno_gateway_tunnel_bytes_total[1m])) / vpno_x_bucket"),
        ["vpno_gateway_tunnel_bytes", "vpno_x"]
    );
    assert!(metrics_in("up").is_empty());
}
