//! What a MaskGateway's status says, from what was observed and planned:
//! one entry per gateway and router, counts for the scale subresource and
//! printer columns, and the `Ready`/`Degraded` conditions with reasons.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use vpno_api::names::{
    GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION, ROLE_GATEWAY,
};
use vpno_api::{
    Condition, GatewayPhase, GatewayStatus, MaskConsumer, MaskGateway, MaskGatewayStatus,
    MaskPhase, RouterRole, RouterStatus,
};

use super::agents::{parse_public_ip, parse_router_role};
use super::network::{NetworkPlan, Problem};

/// Everything known about one gateway replica.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replica<'a> {
    pub ordinal: u32,
    /// Its Mask's name.
    pub mask: String,
    pub consumer: Option<&'a MaskConsumer>,
    pub pod: Option<&'a Pod>,
    /// Its address with the network prefix.
    pub address: Option<String>,
    /// Why it cannot run (no Pod is made while this is set).
    pub problem: Option<String>,
    /// What its agent answered on `/public-ip`.
    pub public_ip_answer: Option<&'a str>,
}

/// Whether a Pod is Ready (and not being deleted).
pub(crate) fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether a Pod's phase is Running.
pub(crate) fn pod_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The status entry of one gateway.
pub(crate) fn gateway_entry(r: &Replica<'_>) -> GatewayStatus {
    let assignment = r
        .consumer
        .filter(|c| c.phase() == MaskPhase::Active)
        .and_then(|c| c.assignment());
    let (phase, message) = match (&r.problem, assignment, r.pod) {
        (Some(problem), _, _) => (GatewayPhase::Failed, Some(problem.clone())),
        (None, None, _) => waiting(r.consumer),
        (None, Some(_), None) => (
            GatewayPhase::Starting,
            Some("creating the gateway Pod".into()),
        ),
        (None, Some(_), Some(p)) if pod_ready(p) => (GatewayPhase::Ready, None),
        (None, Some(_), Some(p)) if pod_running(p) => (
            GatewayPhase::Unhealthy,
            Some("the Pod runs but its tunnel fails the health check".into()),
        ),
        (None, Some(_), Some(_)) => (GatewayPhase::Starting, Some("the Pod is starting".into())),
    };
    GatewayStatus {
        ordinal: r.ordinal,
        phase,
        mask: r.mask.clone(),
        pod: r.pod.map(|p| p.name_any()),
        node: r.pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
        provider: assignment.map(|a| format!("{}/{}", a.namespace, a.name)),
        slot: assignment.map(|a| a.slot),
        address: r.address.clone(),
        public_ip: r
            .public_ip_answer
            .filter(|_| phase == GatewayPhase::Ready)
            .and_then(parse_public_ip),
        message,
    }
}

/// A gateway without a slot: what its consumer says.
fn waiting(consumer: Option<&MaskConsumer>) -> (GatewayPhase, Option<String>) {
    let said = consumer.and_then(|c| c.status.as_ref()?.message.clone());
    match consumer.map(|c| c.phase()) {
        Some(MaskPhase::ErrNoProviders) => (GatewayPhase::Failed, said),
        _ => (
            GatewayPhase::Waiting,
            Some(said.unwrap_or_else(|| "waiting for a provider slot".into())),
        ),
    }
}

/// The status entry of one router Pod, with the role its `/status` said.
pub(crate) fn router_entry(p: &Pod, status_answer: Option<&str>) -> RouterStatus {
    RouterStatus {
        pod: p.name_any(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        address: p.annotations().get(NETWORK_ADDRESS_ANNOTATION).cloned(),
        role: status_answer
            .and_then(parse_router_role)
            .unwrap_or(RouterRole::Unknown),
    }
}

/// The label selector of a MaskGateway's gateway Pods (scale subresource).
pub(crate) fn selector(gw: &MaskGateway) -> String {
    format!(
        "{GATEWAY_LABEL}={},{GATEWAY_ROLE_LABEL}={ROLE_GATEWAY}",
        gw.name_any()
    )
}

/// What the status is made from.
pub(crate) struct StatusInputs<'a> {
    pub gw: &'a MaskGateway,
    /// The network plan, or why there is none.
    pub network: Result<&'a NetworkPlan, &'a Problem>,
    pub gateways: Vec<GatewayStatus>,
    pub routers: Vec<(RouterStatus, bool)>,
    /// Routers wanted.
    pub routers_wanted: u32,
    /// RFC 3339 time of this decision (for condition transitions).
    pub now: &'a str,
}

/// The whole status.
pub(crate) fn status(i: StatusInputs<'_>) -> MaskGatewayStatus {
    let gw = i.gw;
    let prior = gw.status.clone().unwrap_or_default();
    let wanted = gw.spec.replicas;
    let ready = i
        .gateways
        .iter()
        .filter(|g| g.phase == GatewayPhase::Ready)
        .count() as u32;
    let existing = i.gateways.iter().filter(|g| g.pod.is_some()).count() as u32;
    let routers_ready = i.routers.iter().filter(|(_, ready)| *ready).count() as u32;
    let (network, nodes, problems): (_, _, Vec<&Problem>) = match i.network {
        Ok(plan) => (
            plan.status.clone(),
            plan.nodes.clone(),
            plan.problems.iter().collect(),
        ),
        Err(p) => (None, prior.nodes.clone(), vec![p]),
    };
    let ready_cond = ready_condition(wanted, ready, routers_ready, &problems);
    let degraded = degraded_condition(
        &i.gateways,
        wanted,
        ready,
        routers_ready,
        i.routers_wanted,
        &problems,
    );
    let conditions = [ready_cond, degraded]
        .into_iter()
        .map(|c| with_transition(c, &prior.conditions, i.now))
        .collect();
    let ips: Vec<&str> = i
        .gateways
        .iter()
        .filter_map(|g| g.public_ip.as_deref())
        .collect();
    MaskGatewayStatus {
        replicas: existing,
        ready_replicas: ready,
        selector: Some(selector(gw)),
        gateways_ready: Some(format!("{ready}/{wanted}")),
        public_ips: (!ips.is_empty()).then(|| ips.join(",")),
        network,
        nodes,
        gateways: i.gateways,
        routers: i.routers.into_iter().map(|(r, _)| r).collect(),
        conditions,
        observed_generation: gw.metadata.generation,
        last_updated: prior.last_updated,
    }
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        kind: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

fn ready_condition(
    wanted: u32,
    ready: u32,
    routers_ready: u32,
    problems: &[&Problem],
) -> Condition {
    let blocking = problems.iter().find(|p| {
        matches!(
            p.reason,
            "InvalidNetwork" | "ServiceCidrUnknown" | "InvalidExclude"
        )
    });
    if let Some(p) = blocking {
        return condition("Ready", false, p.reason, p.message.clone());
    }
    if wanted == 0 {
        return condition("Ready", false, "ScaledToZero", "replicas is 0".into());
    }
    if ready == 0 {
        return condition(
            "Ready",
            false,
            "NoGatewayReady",
            format!("0 of {wanted} gateways are ready"),
        );
    }
    if routers_ready == 0 {
        return condition("Ready", false, "NoRouterReady", "no router is ready".into());
    }
    condition(
        "Ready",
        true,
        "GatewaysReady",
        format!("{ready} of {wanted} gateways are ready"),
    )
}

fn degraded_condition(
    gateways: &[GatewayStatus],
    wanted: u32,
    ready: u32,
    routers_ready: u32,
    routers_wanted: u32,
    problems: &[&Problem],
) -> Condition {
    if let Some(p) = problems.first() {
        return condition("Degraded", true, p.reason, p.message.clone());
    }
    if let Some(g) = gateways.iter().find(|g| g.phase == GatewayPhase::Failed) {
        let why = g.message.clone().unwrap_or_default();
        return condition(
            "Degraded",
            true,
            "GatewayFailed",
            format!("{}: {why}", g.mask),
        );
    }
    if ready < wanted {
        let first = gateways.iter().find(|g| g.phase != GatewayPhase::Ready);
        let detail = first
            .map(|g| {
                format!(
                    "; {} is {:?}: {}",
                    g.mask,
                    g.phase,
                    g.message.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return condition(
            "Degraded",
            true,
            "GatewaysNotReady",
            format!("{ready} of {wanted} gateways are ready{detail}"),
        );
    }
    if routers_ready < routers_wanted {
        return condition(
            "Degraded",
            true,
            "RoutersNotReady",
            format!("{routers_ready} of {routers_wanted} routers are ready"),
        );
    }
    condition(
        "Degraded",
        false,
        "AsExpected",
        "every gateway and router is ready".into(),
    )
}

/// Keeps the prior transition time while the condition's status stays.
fn with_transition(mut c: Condition, prior: &[Condition], now: &str) -> Condition {
    let before = prior.iter().find(|p| p.kind == c.kind);
    c.last_transition_time = match before {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    c
}

/// Whether the Pod is one of `gw`'s gateway Pods.
pub(crate) fn is_gateway_pod(p: &Pod) -> bool {
    p.labels().get(GATEWAY_ROLE_LABEL).map(String::as_str) == Some(ROLE_GATEWAY)
}
