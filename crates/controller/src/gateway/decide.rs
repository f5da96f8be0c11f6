//! What to do about a MaskGateway, as a pure function of what was observed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use vpno_api::gateway::DEFAULT_ROUTERS;
use vpno_api::names::{GATEWAY_ORDINAL_LABEL, GATEWAY_ROLE_LABEL, ROLE_ROUTER, gateway_mask_name};
use vpno_api::{GatewayPhase, MaskConsumer, MaskGateway, MaskPhase};
use vpno_net::layout::{GatewayLayout, MAX_ROUTERS};

use super::RECHECK;
use super::network::{self, NetworkPlan};
use super::observe::Observed;
use super::render::{self, GatewayPod, RouterPod, gateway_digest, has_template, router_pod_name};
use super::replicas::{mask_effects, ordinal_of};
use super::status::{self, Replica, StatusInputs, is_gateway_pod, pod_ready};
use crate::context::controller_ref;
use crate::effect::{
    CredentialKeys, Effect, EventNote, Kind, NewObject, Propagation, StatusWrite, regarding,
    status_changed, status_patch, target_of,
};

/// How often running agents are asked again for public IP and role.
const AGENT_REFRESH: Duration = Duration::from_secs(15);

/// The effects, and whether to look again after a while.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub effects: Vec<Effect>,
    pub recheck: Option<Duration>,
}

/// What to do about a MaskGateway.
pub(crate) fn decide(o: &Observed) -> Decision {
    let gw = o.gateway.as_ref();
    let Some(owner) = controller_ref(gw) else {
        return Decision::default();
    };
    if gw.meta().deletion_timestamp.is_some() {
        // Owner references take everything down; consumers free the slots.
        return Decision::default();
    }
    let plan = network::plan(gw, o.nodes.as_deref(), o.service_cidr.as_deref());
    let mut effects = Vec::new();
    let mut recheck = None;
    let (gateways, routers) = match &plan {
        Ok(plan) => {
            let capacity = plan.layout.gateway_capacity();
            let masks: Vec<_> = o.masks.iter().map(|m| m.as_ref()).collect();
            effects.extend(mask_effects(gw, &masks, gw.spec.replicas.min(capacity)));
            let (g, waits) = gateway_pods(o, plan, &mut effects);
            if waits {
                recheck = Some(RECHECK);
            }
            let r = router_pods(o, &plan.layout, &owner, &mut effects);
            (g, r)
        }
        // The range is unusable: keep what exists, show why.
        Err(_) => (Vec::new(), Vec::new()),
    };
    let desired = status::status(StatusInputs {
        gw,
        network: plan.as_ref(),
        gateways,
        routers,
        routers_wanted: routers_wanted(gw),
        now: &o.now,
    });
    if desired
        .conditions
        .iter()
        .any(|c| c.kind == "Degraded" && c.status == "True")
    {
        recheck.get_or_insert(RECHECK);
    }
    // Public IPs and router roles change without a watch event: ask again.
    if o.pods.iter().any(|p| status::pod_running(p)) {
        recheck = Some(recheck.map_or(AGENT_REFRESH, |r| r.min(AGENT_REFRESH)));
    }
    effects.extend(events(gw, &desired));
    let prior = gw.status.as_ref();
    if status_changed(prior, &desired) {
        let patch = status_patch(prior, &desired);
        effects.push(Effect::PatchStatus {
            target: target_of(Kind::MaskGateway, gw),
            status: StatusWrite::Gateway {
                desired: Box::new(desired),
                patch,
            },
        });
    }
    Decision { effects, recheck }
}

/// Routers wanted (default 2, at most what the layout holds).
fn routers_wanted(gw: &MaskGateway) -> u32 {
    gw.spec
        .routers
        .unwrap_or(DEFAULT_ROUTERS)
        .clamp(1, MAX_ROUTERS)
}

fn consumer_of<'a>(o: &'a Observed, mask: &vpno_api::Mask) -> Option<&'a MaskConsumer> {
    let uid = mask.uid()?;
    o.consumers.iter().map(|c| c.as_ref()).find(|c| {
        c.name_any() == mask.name_any() && c.owner_references().iter().any(|r| r.uid == uid)
    })
}

fn owned_by(p: &Pod, uid: Option<&String>) -> bool {
    p.owner_references().iter().any(|r| Some(&r.uid) == uid)
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn delete_pod(p: &Pod, out: &mut Vec<Effect>) {
    if p.metadata.deletion_timestamp.is_none() {
        out.push(Effect::DeleteIf {
            target: target_of(Kind::Pod, p),
            uid: p.uid(),
            propagation: Propagation::Background,
        });
    }
}

/// Gateway Pods: one per replica whose consumer holds a slot and whose
/// credentials give it a key of its own. Returns the status entries and
/// whether something is waited on outside the watches.
fn gateway_pods(
    o: &Observed,
    plan: &NetworkPlan,
    out: &mut Vec<Effect>,
) -> (Vec<vpno_api::GatewayStatus>, bool) {
    let gw = o.gateway.as_ref();
    let layout = &plan.layout;
    let by_ordinal: BTreeMap<u32, &vpno_api::Mask> = o
        .masks
        .iter()
        .filter_map(|m| Some((ordinal_of(gw, m)?, m.as_ref())))
        .collect();
    let pod_of = |ordinal: u32| {
        o.pods.iter().map(|p| p.as_ref()).find(|p| {
            is_gateway_pod(p) && p.labels().get(GATEWAY_ORDINAL_LABEL) == Some(&ordinal.to_string())
        })
    };
    // One replacement at a time: a stale Pod goes only while every other
    // gateway that has a Pod is ready.
    let not_ready = (0..gw.spec.replicas)
        .filter_map(pod_of)
        .filter(|p| !pod_ready(p))
        .count();
    let mut rolled = false;
    let mut waits = false;
    let mut entries = Vec::new();
    for ordinal in 0..gw.spec.replicas {
        let mask = by_ordinal.get(&ordinal).copied();
        let consumer = mask.and_then(|m| consumer_of(o, m));
        let pod = pod_of(ordinal);
        let mut replica = Replica {
            ordinal,
            mask: gateway_mask_name(&gw.name_any(), ordinal),
            consumer,
            pod,
            public_ip_answer: pod.and_then(|p| o.agents.get(&p.name_any()).map(String::as_str)),
            ..Default::default()
        };
        let address = match layout.gateway(ordinal) {
            Ok(a) => a,
            Err(e) => {
                replica.problem = Some(e.to_string());
                entries.push(status::gateway_entry(&replica));
                continue;
            }
        };
        replica.address = Some(layout.with_prefix(address).to_string());
        let holder = consumer
            .filter(|c| c.phase() == MaskPhase::Active && c.meta().deletion_timestamp.is_none());
        let assignment = holder.and_then(|c| Some((c, c.assignment()?, controller_ref(c)?)));
        if let Some(p) = pod {
            // A Pod of an earlier consumer, or one that ended: replace it.
            let current = assignment
                .as_ref()
                .is_some_and(|(c, _, _)| owned_by(p, c.uid().as_ref()));
            if !current || finished(p) {
                delete_pod(p, out);
            }
        }
        if let Some((_c, a, owner)) = assignment {
            let keys = o.credentials.get(&a.secret);
            let problem =
                keys.and_then(|k| render::slot_key_problem(gw.spec.tunnel.kind, k, a.slot));
            let spec = GatewayPod {
                gw,
                ordinal,
                slot: a.slot,
                secret: &a.secret,
                keys: keys.unwrap_or(&EMPTY),
                layout,
                address,
                owner: owner.clone(),
                images: &o.images,
            };
            match (pod, &problem) {
                (Some(p), Some(_)) => delete_pod(p, out),
                (Some(p), None) => {
                    let stale = !has_template(p, &gateway_digest(&spec));
                    let others_ready = not_ready == usize::from(!pod_ready(p));
                    if stale && others_ready && !rolled && owned_by(p, Some(&owner.uid)) {
                        rolled = true;
                        delete_pod(p, out);
                    }
                }
                (None, None) if keys.is_some() => {
                    out.push(Effect::Create(NewObject::Pod(Box::new(
                        render::gateway_pod(&spec),
                    ))));
                    out.push(Effect::Count("create_gateway_pod"));
                }
                (None, None) => waits = true,
                (None, Some(_)) => {}
            }
            waits |= problem.is_some();
            replica.problem = problem;
        }
        entries.push(status::gateway_entry(&replica));
    }
    (entries, waits)
}

static EMPTY: CredentialKeys = CredentialKeys {
    keys: std::collections::BTreeSet::new(),
    vpn_type: None,
};

/// Router Pods `<gw>-router-<i>`, their account and key; extra ones deleted.
/// Returns each router Pod's status entry and readiness.
fn router_pods(
    o: &Observed,
    layout: &GatewayLayout,
    owner: &OwnerReference,
    out: &mut Vec<Effect>,
) -> Vec<(vpno_api::RouterStatus, bool)> {
    let gw = o.gateway.as_ref();
    let name = gw.name_any();
    let count = routers_wanted(gw);
    let routers: Vec<&Pod> = o
        .pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.labels().get(GATEWAY_ROLE_LABEL).map(String::as_str) == Some(ROLE_ROUTER))
        .collect();
    if !o.router_key_exists {
        out.push(Effect::Create(NewObject::RandomKey(Box::new(
            render::router_key(gw, owner),
        ))));
    }
    let not_ready = routers.iter().filter(|p| !pod_ready(p)).count();
    let mut rolled = false;
    let mut account_made = false;
    for index in 0..count {
        let Some(desired) = render::router_pod(&RouterPod {
            gw,
            index,
            count,
            layout,
            owner: owner.clone(),
            images: &o.images,
        }) else {
            continue;
        };
        let digest = desired
            .annotations()
            .get(render::TEMPLATE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        match routers
            .iter()
            .find(|p| p.name_any() == router_pod_name(&name, index))
        {
            None => {
                if !account_made {
                    account_made = true;
                    let (sa, role, binding) = render::router_account(gw, owner);
                    out.push(Effect::Create(NewObject::ServiceAccount(Box::new(sa))));
                    out.push(Effect::Create(NewObject::Role(Box::new(role))));
                    out.push(Effect::Create(NewObject::RoleBinding(Box::new(binding))));
                }
                out.push(Effect::Create(NewObject::Pod(Box::new(desired))));
                out.push(Effect::Count("create_router_pod"));
            }
            Some(p) if finished(p) => delete_pod(p, out),
            Some(p) => {
                let others_ready = not_ready == usize::from(!pod_ready(p));
                if !has_template(p, &digest) && others_ready && !rolled {
                    rolled = true;
                    delete_pod(p, out);
                }
            }
        }
    }
    let wanted: Vec<String> = (0..count).map(|i| router_pod_name(&name, i)).collect();
    let mut entries = Vec::new();
    for p in routers {
        if wanted.contains(&p.name_any()) {
            let answer = o.agents.get(&p.name_any()).map(String::as_str);
            entries.push((status::router_entry(p, answer), pod_ready(p)));
        } else {
            delete_pod(p, out);
        }
    }
    entries.sort_by(|a, b| a.0.pod.cmp(&b.0.pod));
    entries
}

/// Warning Events for user-caused problems, once when they appear.
fn events(gw: &MaskGateway, desired: &vpno_api::MaskGatewayStatus) -> Vec<Effect> {
    let reason_of = |s: Option<&vpno_api::MaskGatewayStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.kind == "Degraded"))
            .filter(|c| c.status == "True")
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
    };
    let mut out = Vec::new();
    let user_caused =
        |r: &str| !matches!(r, "GatewaysNotReady" | "RoutersNotReady" | "GatewayFailed");
    if let Some((reason, message)) = reason_of(Some(desired))
        && user_caused(&reason)
        && reason_of(gw.status.as_ref()).map(|(r, _)| r) != Some(reason.clone())
    {
        out.push(Effect::Event(EventNote {
            regarding: regarding(gw),
            warning: true,
            reason,
            action: "Reconcile".into(),
            note: message,
        }));
    }
    let failed_before: Vec<u32> = gw
        .status
        .iter()
        .flat_map(|s| s.gateways.iter())
        .filter(|g| g.phase == GatewayPhase::Failed)
        .map(|g| g.ordinal)
        .collect();
    for g in desired
        .gateways
        .iter()
        .filter(|g| g.phase == GatewayPhase::Failed)
    {
        if !failed_before.contains(&g.ordinal) {
            out.push(Effect::Event(EventNote {
                regarding: regarding(gw),
                warning: true,
                reason: "GatewayFailed".into(),
                action: "CreatePod".into(),
                note: format!("{}: {}", g.mask, g.message.clone().unwrap_or_default()),
            }));
        }
    }
    out
}
