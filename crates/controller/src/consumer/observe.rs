//! What the consumer controller decides on, and how it is read: the cache
//! first, fresh reads only where the cache may lag behind our own writes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::names::{reservation_name, slot_of_reservation};
use vpno_api::{AssignedProvider, Mask, MaskConsumer, MaskProvider, MaskReservation};

use super::decide;
use super::release::{self, Holding};
use crate::context::{Ctx, Versions, ns_of, uid_of};
use crate::effect::Executor;
use crate::error::ControllerError;
use crate::plan::assign::ProviderSlots;

const KIND: &str = "MaskConsumer";

/// One consumer as the controller sees it.
pub(crate) struct Observed {
    /// The consumer (from the cache).
    pub consumer: Arc<MaskConsumer>,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
    /// Where it stands.
    pub state: State,
}

/// Where a consumer stands.
pub(crate) enum State {
    /// Being deleted: what still holds its slot.
    Deleting(Holding),
    /// Its controlling Mask is gone (confirmed by a fresh read).
    Orphaned,
    /// It holds a slot.
    Assigned(Held),
    /// It holds no slot yet.
    Unassigned(Free),
}

/// A consumer holding a slot.
pub(crate) struct Held {
    /// The recorded assignment.
    pub assignment: AssignedProvider,
    /// Why the assignment is no longer valid (provider or reservation gone).
    pub lost: Option<String>,
    /// The provider, from the cache.
    pub provider: Option<Arc<MaskProvider>>,
    /// The provider Secret and the copy (read only for a valid, admitted assignment).
    pub credentials: Credentials,
}

/// The provider Secret and its copy, as read.
pub(crate) enum Credentials {
    /// Not read (the assignment is being given up).
    NotRead,
    /// Not read: the cache shows both at the versions last seen equal.
    InStep,
    /// The provider Secret does not exist.
    SourceMissing,
    /// Both read; `copy` is `None` when the copy does not exist.
    Read {
        source: Box<Secret>,
        copy: Option<Box<Secret>>,
    },
}

/// A consumer without a slot.
pub(crate) struct Free {
    /// A reservation already made for it (before a crash, or by another replica).
    pub adoptable: Option<Candidate>,
    /// Every provider with its slots.
    pub providers: Vec<(Arc<MaskProvider>, ProviderSlots)>,
}

/// A slot held by a reservation, to be recorded on the consumer.
#[derive(Clone)]
pub(crate) struct Candidate {
    /// The provider.
    pub provider: Arc<MaskProvider>,
    /// The slot.
    pub slot: u32,
    /// The reservation holding it.
    pub reservation: Arc<MaskReservation>,
}

/// The second look after a slot was taken.
pub(crate) struct Completion {
    /// The slot taken.
    pub held: Candidate,
    /// A fresh read of the consumer.
    pub fresh: Option<MaskConsumer>,
    /// The provider Secret (read only when the assignment is to be recorded).
    pub source: Option<Secret>,
}

/// Observes one consumer.
pub(crate) async fn observe(
    consumer: Arc<MaskConsumer>,
    ctx: &Ctx,
) -> Result<Observed, ControllerError> {
    let namespace = ns_of(consumer.as_ref(), KIND)?;
    let uid = uid_of(consumer.as_ref(), KIND)?;
    let state = if consumer.meta().deletion_timestamp.is_some() {
        State::Deleting(release::observe(&consumer, &namespace, &uid, ctx).await?)
    } else if owner_mask_gone(&consumer, &namespace, ctx).await? {
        State::Orphaned
    } else if let Some(a) = consumer.assignment() {
        State::Assigned(held(&consumer, &namespace, &uid, a, ctx).await?)
    } else {
        State::Unassigned(free(&consumer, &uid, ctx))
    };
    Ok(Observed {
        consumer,
        namespace,
        uid,
        state,
    })
}

/// The second look: a fresh read of the consumer, and of the provider Secret
/// when the assignment is to be recorded.
pub(crate) async fn completion<E: Executor>(
    o: &Observed,
    held: Candidate,
    ex: &E,
) -> Result<Completion, ControllerError> {
    let fresh = ex
        .fresh_consumer(&o.namespace, &o.consumer.name_any())
        .await?;
    let source = if decide::needs_source(o, fresh.as_ref()) {
        let p_ns = held.provider.namespace().unwrap_or_default();
        ex.fresh::<Secret>(&p_ns, &held.provider.spec.secret)
            .await?
    } else {
        None
    };
    Ok(Completion {
        held,
        fresh,
        source,
    })
}

/// Whether the consumer's controlling Mask has been deleted (checked against
/// the API server, never on the cache alone).
async fn owner_mask_gone(
    consumer: &MaskConsumer,
    ns: &str,
    ctx: &Ctx,
) -> Result<bool, ControllerError> {
    let Some(owner) = consumer
        .owner_references()
        .iter()
        .find(|o| o.kind == "Mask" && o.controller == Some(true))
    else {
        return Ok(false);
    };
    let alive = |m: &Mask| {
        m.uid().as_deref() == Some(owner.uid.as_str()) && m.meta().deletion_timestamp.is_none()
    };
    if ctx
        .masks
        .get(&ObjectRef::new(&owner.name).within(ns))
        .is_some_and(|m| alive(&m))
    {
        return Ok(false);
    }
    let fresh = ctx.fresh::<Mask>(ns, &owner.name).await?;
    Ok(!fresh.is_some_and(|m| alive(&m)))
}

async fn held(
    consumer: &MaskConsumer,
    ns: &str,
    uid: &str,
    a: &AssignedProvider,
    ctx: &Ctx,
) -> Result<Held, ControllerError> {
    let lost = validate(uid, a, ctx).await?;
    let provider = ctx.provider(&a.namespace, &a.name);
    let admitted = provider
        .as_ref()
        .is_some_and(|p| decide::no_longer_admitted(consumer, ns, p).is_none());
    let credentials = match (&lost, &provider) {
        (None, Some(p)) if admitted => read_credentials(ns, a, p, ctx).await?,
        _ => Credentials::NotRead,
    };
    Ok(Held {
        assignment: a.clone(),
        lost,
        provider,
        credentials,
    })
}

async fn read_credentials(
    ns: &str,
    a: &AssignedProvider,
    provider: &MaskProvider,
    ctx: &Ctx,
) -> Result<Credentials, ControllerError> {
    let version = |ns: &str, name: &str| {
        ctx.secret(ns, name)
            .and_then(|s| s.metadata.resource_version.clone())
    };
    if let (Some(source), Some(copy)) = (
        version(&a.namespace, &provider.spec.secret),
        version(ns, &a.secret),
    ) && ctx
        .copies_in_step
        .holds(ns, &a.secret, &Versions { source, copy })
    {
        return Ok(Credentials::InStep);
    }
    let Some(source) = ctx
        .fresh::<Secret>(&a.namespace, &provider.spec.secret)
        .await?
    else {
        return Ok(Credentials::SourceMissing);
    };
    let copy = ctx.fresh::<Secret>(ns, &a.secret).await?;
    Ok(Credentials::Read {
        source: Box::new(source),
        copy: copy.map(Box::new),
    })
}

/// Why a held assignment is no longer valid, if it is not: the cache first;
/// the store may lag behind our own writes, so confirm with the API server
/// before calling anything lost.
async fn validate(
    uid: &str,
    a: &AssignedProvider,
    ctx: &Ctx,
) -> Result<Option<String>, ControllerError> {
    let res_name = reservation_name(&a.name, a.slot);
    let provider_ok = |p: &MaskProvider| p.uid().as_deref() == Some(a.uid.as_str());
    let reservation_ok = |r: &MaskReservation| {
        r.uid().as_deref() == Some(a.reservation.as_str()) && r.spec.uid == uid
    };
    let in_store = ctx
        .provider(&a.namespace, &a.name)
        .is_some_and(|p| provider_ok(&p))
        && ctx
            .reservations
            .get(&ObjectRef::new(&res_name).within(&a.namespace))
            .is_some_and(|r| reservation_ok(&r));
    if in_store {
        return Ok(None);
    }
    if !ctx
        .fresh::<MaskProvider>(&a.namespace, &a.name)
        .await?
        .is_some_and(|p| provider_ok(&p))
    {
        return Ok(Some(format!(
            "provider {}/{} no longer exists",
            a.namespace, a.name
        )));
    }
    if ctx
        .fresh::<MaskReservation>(&a.namespace, &res_name)
        .await?
        .is_some_and(|r| reservation_ok(&r))
    {
        return Ok(None);
    }
    Ok(Some(format!(
        "reservation {}/{res_name} of slot {} was removed",
        a.namespace, a.slot
    )))
}

fn free(consumer: &MaskConsumer, uid: &str, ctx: &Ctx) -> Free {
    let providers = ctx.provider_slots();
    let adoptable = ctx
        .reservations_for(consumer)
        .into_iter()
        .filter(|r| r.spec.uid == uid && r.meta().deletion_timestamp.is_none())
        .find_map(|r| adoptable_slot(&providers, r));
    Free {
        adoptable,
        providers,
    }
}

/// The provider and slot `r` holds, when it is a live reservation of a known provider.
fn adoptable_slot(
    providers: &[(Arc<MaskProvider>, ProviderSlots)],
    r: Arc<MaskReservation>,
) -> Option<Candidate> {
    let r_ns = r.namespace().unwrap_or_default();
    providers.iter().find_map(|(p, _)| {
        let owns = p.namespace().as_deref() == Some(r_ns.as_str())
            && r.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == p.uid().as_ref());
        let slot = slot_of_reservation(&p.name_any(), &r.name_any())?;
        owns.then(|| Candidate {
            provider: p.clone(),
            slot,
            reservation: r.clone(),
        })
    })
}
