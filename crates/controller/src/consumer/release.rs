//! Releasing a consumer being deleted: the workloads it owns (and through the
//! garbage collector theirs) and every Pod using its credentials go first,
//! then its credentials, then the reservation; only then the finalizer.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use vpno_api::names::reservation_name;
use vpno_api::{MaskConsumer, MaskConsumerStatus, MaskPhase, MaskReservation};

use super::decide::{Decided, consumer_status};
use super::observe::Observed;
use crate::context::Ctx;
use crate::effect::{ApiObject, Effect, Executor, Kind, Propagation, Target, target_of};
use crate::error::ControllerError;
use crate::plan::release::{holding_message, pod_holds_secret};
use crate::plan::{CONSUMER_FINALIZER, finalizers};

/// What still holds a consumer's slot.
pub(crate) struct Holding {
    /// Whether a finalizer of ours (or the original's) waits for the release.
    pub awaits: bool,
    /// Workloads and Pods the consumer owns directly (workloads first).
    pub owned: Vec<Owned>,
    /// Other Pods that use its credentials (`Pod <name>`).
    pub using: Vec<String>,
    /// Reservations the cache shows for it.
    pub reservations: Vec<Arc<MaskReservation>>,
}

/// An object the consumer owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owned {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: Option<String>,
    /// Whether it is being deleted already.
    pub deleting: bool,
}

/// Reads what holds the slot (nothing when no finalizer waits for it).
pub(crate) async fn observe(
    consumer: &MaskConsumer,
    ns: &str,
    uid: &str,
    ctx: &Ctx,
) -> Result<Holding, ControllerError> {
    let awaits = finalizers::awaits_release(consumer.finalizers(), Some(CONSUMER_FINALIZER));
    let mut holding = Holding {
        awaits,
        owned: Vec::new(),
        using: Vec::new(),
        reservations: Vec::new(),
    };
    if !awaits {
        return Ok(holding);
    }
    let owned = &mut holding.owned;
    owned.extend(owned_by::<Deployment, _>(ctx, ns, uid, Kind::Deployment).await?);
    owned.extend(owned_by::<StatefulSet, _>(ctx, ns, uid, Kind::StatefulSet).await?);
    owned.extend(owned_by::<DaemonSet, _>(ctx, ns, uid, Kind::DaemonSet).await?);
    owned.extend(owned_by::<ReplicaSet, _>(ctx, ns, uid, Kind::ReplicaSet).await?);
    owned.extend(owned_by::<Job, _>(ctx, ns, uid, Kind::Job).await?);
    owned.extend(owned_by::<Pod, _>(ctx, ns, uid, Kind::Pod).await?);
    if let Some(a) = consumer.assignment() {
        let owned_pods: Vec<&str> = holding
            .owned
            .iter()
            .filter(|o| o.kind == Kind::Pod)
            .map(|o| o.name.as_str())
            .collect();
        holding.using = ctx
            .list::<Pod>(ns)
            .await?
            .iter()
            .filter(|p| pod_holds_secret(p, &a.secret))
            .map(|p| p.name_any())
            .filter(|name| !owned_pods.contains(&name.as_str()))
            .map(|name| format!("Pod {name}"))
            .collect();
    }
    holding.reservations = ctx
        .reservations_for(consumer)
        .into_iter()
        .filter(|r| r.spec.uid == uid)
        .collect();
    Ok(holding)
}

/// The `kind` objects in `ns` owned directly by the consumer `uid`.
async fn owned_by<K: ApiObject, E: Executor>(
    ex: &E,
    ns: &str,
    uid: &str,
    kind: Kind,
) -> Result<Vec<Owned>, ControllerError> {
    let metas: Vec<ObjectMeta> = ex.list_metadata::<K>(ns).await?;
    Ok(metas
        .into_iter()
        .filter(|m| m.owner_references.iter().flatten().any(|r| r.uid == uid))
        .map(|m| Owned {
            kind,
            name: m.name.unwrap_or_default(),
            uid: m.uid,
            deleting: m.deletion_timestamp.is_some(),
        })
        .collect())
}

/// What to do about a consumer being deleted.
pub(crate) fn decide(o: &Observed, h: &Holding) -> Decided {
    if !h.awaits {
        return Decided::wait(Vec::new());
    }
    let consumer = o.consumer.as_ref();
    let mut effects = delete_owned(&o.namespace, &h.owned);
    let names: Vec<String> = h
        .owned
        .iter()
        .map(|w| format!("{} {}", w.kind.name(), w.name))
        .collect();
    let desired = MaskConsumerStatus {
        phase: Some(MaskPhase::Terminating),
        message: Some(holding_message(&names, &h.using)),
        last_updated: None,
        provider: consumer.assignment().cloned(),
    };
    effects.extend(consumer_status(
        consumer,
        consumer.status.as_ref(),
        desired,
        None,
    ));
    // Deleted Pods the consumer owns wake this reconcile; nothing watches
    // the other kinds or indirectly owned Pods, so poll for those.
    if h.owned.iter().any(|w| w.kind != Kind::Pod) || !h.using.is_empty() {
        return Decided::after(effects, Duration::from_secs(1));
    }
    if !h.owned.is_empty() {
        // Pods take their grace period to stop; their deletion wakes this
        // reconcile (the timer is only a safety net).
        return Decided::after(effects, Duration::from_secs(5));
    }
    effects.extend(free_the_slot(o, h));
    Decided::wait(effects)
}

/// Foreground deletes of what the consumer owns and is not being deleted yet.
fn delete_owned(ns: &str, owned: &[Owned]) -> Vec<Effect> {
    owned
        .iter()
        .filter(|w| !w.deleting)
        .flat_map(|w| {
            [
                Effect::DeleteIf {
                    target: Target {
                        kind: w.kind,
                        namespace: ns.to_string(),
                        name: w.name.clone(),
                    },
                    uid: w.uid.clone(),
                    propagation: Propagation::Foreground,
                },
                Effect::Count(if w.kind == Kind::Pod {
                    "delete_pod"
                } else {
                    "delete_workload"
                }),
            ]
        })
        .collect()
}

/// Nothing uses the slot any more: the credentials go, then every
/// reservation of the consumer, then the finalizer.
fn free_the_slot(o: &Observed, h: &Holding) -> Vec<Effect> {
    let consumer = o.consumer.as_ref();
    let mut effects = Vec::new();
    let delete = |target: Target, uid: Option<String>| Effect::DeleteIf {
        target,
        uid,
        propagation: Propagation::Background,
    };
    if let Some(a) = consumer.assignment() {
        effects.push(delete(
            Target {
                kind: Kind::Secret,
                namespace: o.namespace.clone(),
                name: a.secret.clone(),
            },
            None,
        ));
    }
    for r in &h.reservations {
        effects.push(delete(
            target_of(Kind::MaskReservation, r.as_ref()),
            r.uid(),
        ));
    }
    if let Some(a) = consumer.assignment() {
        // Also when the store has not seen the reservation yet.
        let name = reservation_name(&a.name, a.slot);
        let seen = h
            .reservations
            .iter()
            .any(|r| r.name_any() == name && r.uid().as_deref() == Some(a.reservation.as_str()));
        if !seen {
            effects.push(delete(
                Target {
                    kind: Kind::MaskReservation,
                    namespace: a.namespace.clone(),
                    name,
                },
                Some(a.reservation.clone()),
            ));
        }
    }
    if !h.reservations.is_empty() || consumer.assignment().is_some() {
        effects.push(Effect::Count("release"));
    }
    if let Some(new) = finalizers::released(consumer.finalizers(), Some(CONSUMER_FINALIZER)) {
        effects.push(Effect::SetFinalizers {
            target: target_of(Kind::MaskConsumer, consumer),
            current: consumer.finalizers().to_vec(),
            new,
        });
    }
    effects
}
