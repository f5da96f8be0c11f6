//! What the provider controller decides on, and how it is read: the cache
//! first, fresh reads where the cache may lag (the provider Secret just
//! created, the verification Pod, holders of reservations being freed).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::{Mask, MaskConsumer, MaskPhase, MaskProvider, MaskReservation};

use crate::context::{Ctx, ns_of, uid_of};
use crate::effect::Executor;
use crate::error::ControllerError;
use crate::plan::verify::Attempt;
use crate::plan::verify_pod::pod_progress;
use crate::plan::{PROVIDER_FINALIZER, finalizers, verify_object_name};
use crate::reservation::owned_by;

const KIND: &str = "MaskProvider";

/// One provider as the controller sees it.
pub(crate) struct Observed {
    /// The provider (from the cache).
    pub provider: Arc<MaskProvider>,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
    /// Where it stands.
    pub state: State,
}

/// Where a provider stands.
pub(crate) enum State {
    /// Being deleted: who still holds its slots.
    Deleting(Unassigning),
    /// In use.
    Live(Live),
}

/// A live provider.
pub(crate) struct Live {
    /// The resourceVersion of its Secret, `None` when it does not exist.
    pub secret_version: Option<String>,
    /// Its reservations (slot, reservation, holder from the cache).
    pub held: Vec<HeldSlot>,
    /// The verification attempt in progress.
    pub attempt: AttemptView,
    /// Since the last status write that changed `activeSlots`.
    pub since_count_write: Option<Duration>,
    /// Verification timeout when the provider sets none.
    pub default_timeout: Duration,
    /// Now.
    pub now: jiff::Timestamp,
}

/// One reservation of the provider.
pub(crate) struct HeldSlot {
    pub slot: u32,
    pub reservation: Arc<MaskReservation>,
    /// The consumer it names, when the cache has it with the named uid.
    pub holder: Option<Arc<MaskConsumer>>,
}

/// The verification attempt in progress, as far as the cache (and a GET of
/// its Pod, once the slot is held) shows it.
pub(crate) struct AttemptView {
    pub mask: Option<Arc<Mask>>,
    pub consumer: Option<Arc<MaskConsumer>>,
    pub attempt: Option<Attempt>,
}

/// A provider being deleted.
pub(crate) struct Unassigning {
    /// Whether a finalizer of ours (or the original's) waits for it.
    pub awaits: bool,
    /// Consumers assigned to it (by status or by reservation).
    pub victims: Vec<Arc<MaskConsumer>>,
    /// How many reservations it still has (a fresh list).
    pub reservations_left: usize,
    /// Reservations whose holder is gone (confirmed by fresh reads).
    pub orphaned: Vec<MaskReservation>,
    /// Whether the cache still shows any victim.
    pub victims_present: bool,
}

/// Observes one provider.
pub(crate) async fn observe(
    provider: Arc<MaskProvider>,
    ctx: &Ctx,
) -> Result<Observed, ControllerError> {
    let namespace = ns_of(provider.as_ref(), KIND)?;
    let uid = uid_of(provider.as_ref(), KIND)?;
    let state = if provider.meta().deletion_timestamp.is_some() {
        State::Deleting(unassigning(&provider, &namespace, &uid, ctx).await?)
    } else {
        State::Live(live(&provider, &namespace, &uid, ctx).await?)
    };
    Ok(Observed {
        provider,
        namespace,
        uid,
        state,
    })
}

async fn live(p: &MaskProvider, ns: &str, uid: &str, ctx: &Ctx) -> Result<Live, ControllerError> {
    let held = ctx
        .reservations_of(p)
        .into_iter()
        .map(|(slot, r)| {
            let holder = ctx
                .consumers
                .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace))
                .filter(|c| c.uid().as_deref() == Some(r.spec.uid.as_str()));
            HeldSlot {
                slot,
                reservation: r,
                holder,
            }
        })
        .collect();
    Ok(Live {
        secret_version: secret_version(p, ns, ctx).await?,
        held,
        attempt: attempt(p, ns, uid, ctx).await?,
        since_count_write: ctx.slot_count_writes.since(uid),
        default_timeout: ctx.config.default_verify_timeout,
        now: jiff::Timestamp::now(),
    })
}

/// The resourceVersion of the provider's credentials Secret, `None` when it
/// does not exist: from the cache, confirmed with the API server when the
/// cache has not seen it (it may lag behind a Secret created just now).
async fn secret_version(
    p: &MaskProvider,
    ns: &str,
    ctx: &Ctx,
) -> Result<Option<String>, ControllerError> {
    if let Some(s) = ctx.secret(ns, &p.spec.secret) {
        return Ok(Some(
            s.metadata.resource_version.clone().unwrap_or_default(),
        ));
    }
    let fresh = ctx.fresh::<Secret>(ns, &p.spec.secret).await?;
    Ok(fresh.map(|s| s.metadata.resource_version.unwrap_or_default()))
}

async fn attempt(
    p: &MaskProvider,
    ns: &str,
    uid: &str,
    ctx: &Ctx,
) -> Result<AttemptView, ControllerError> {
    let vname = verify_object_name(&p.name_any());
    let mask = ctx
        .masks
        .get(&ObjectRef::new(&vname).within(ns))
        .filter(|m| {
            m.owner_references().iter().any(|o| o.uid == uid)
                && m.meta().deletion_timestamp.is_none()
        });
    let Some(m) = &mask else {
        return Ok(AttemptView {
            mask: None,
            consumer: None,
            attempt: None,
        });
    };
    let started = m
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(jiff::Timestamp::now);
    let consumer = ctx
        .consumers
        .get(&ObjectRef::new(&vname).within(ns))
        .filter(|c| {
            c.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == m.uid().as_ref())
        });
    let slot_held = consumer
        .as_ref()
        .is_some_and(|c| c.phase() == MaskPhase::Active && c.assignment().is_some());
    let pod = if slot_held {
        let c_uid = consumer.as_ref().and_then(|c| c.uid());
        ctx.fresh::<Pod>(ns, &vname)
            .await?
            .filter(|pod| {
                pod.owner_references()
                    .iter()
                    .any(|o| c_uid.as_ref() == Some(&o.uid))
            })
            .map(|pod| pod_progress(&pod))
    } else {
        None
    };
    Ok(AttemptView {
        mask,
        consumer,
        attempt: Some(Attempt {
            started,
            slot_held,
            pod,
        }),
    })
}

async fn unassigning(
    p: &MaskProvider,
    ns: &str,
    uid: &str,
    ctx: &Ctx,
) -> Result<Unassigning, ControllerError> {
    let awaits = finalizers::awaits_release(p.finalizers(), Some(PROVIDER_FINALIZER));
    let mut u = Unassigning {
        awaits,
        victims: Vec::new(),
        reservations_left: 0,
        orphaned: Vec::new(),
        victims_present: false,
    };
    if !awaits {
        return Ok(u);
    }
    u.victims = ctx.consumers_assigned_to(uid);
    for (_, r) in ctx.reservations_of(p) {
        if let Some(c) = ctx
            .consumers
            .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace))
            && c.uid().as_deref() == Some(r.spec.uid.as_str())
            && !u.victims.iter().any(|v| v.uid() == c.uid())
        {
            u.victims.push(c);
        }
    }
    // Reservations whose consumer is already gone are freed directly.
    let remaining: Vec<MaskReservation> = ctx.list::<MaskReservation>(ns).await?;
    for r in remaining.into_iter().filter(|r| owned_by(r, p)) {
        u.reservations_left += 1;
        let holds = |c: &MaskConsumer| c.uid().as_deref() == Some(r.spec.uid.as_str());
        let holder_alive = u.victims.iter().any(|c| holds(c))
            || ctx
                .consumers
                .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace))
                .is_some_and(|c| holds(&c));
        if !holder_alive {
            let fresh = ctx.fresh_consumer(&r.spec.namespace, &r.spec.name).await?;
            if !fresh.is_some_and(|c| holds(&c)) {
                u.orphaned.push(r);
            }
        }
    }
    u.victims_present = u.victims.iter().any(|c| {
        ctx.consumers
            .get(&ObjectRef::from_obj(c.as_ref()))
            .is_some()
    });
    Ok(u)
}
