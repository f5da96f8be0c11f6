//! MaskReservation controller: marks held reservations Active and reclaims
//! reservations whose consumer is gone or is another object now.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vpno_api::{MaskConsumer, MaskProvider, MaskReservation, ReservationPhase};

use crate::context::{Ctx, ns_of};
use crate::error::ControllerError;
use crate::plan::finalizers;
use crate::plan::status::now_rfc3339;

const KIND: &str = "MaskReservation";

/// How the reservation relates to its consumer.
enum Holder {
    /// The consumer's assignment points at this reservation.
    Holds,
    /// The consumer exists (same uid) but has not recorded the assignment yet.
    Assigning,
    /// The consumer is gone, is another object, or holds another reservation.
    Orphaned(String),
}

fn judge(r: &MaskReservation, consumer: Option<&MaskConsumer>) -> Holder {
    let who = format!("{}/{}", r.spec.namespace, r.spec.name);
    match consumer {
        None => Holder::Orphaned(format!("consumer {who} no longer exists")),
        Some(c) if c.uid().as_deref() != Some(r.spec.uid.as_str()) => Holder::Orphaned(format!(
            "consumer {who} is a different object now (uid changed)"
        )),
        Some(c) => match c.assignment() {
            Some(a) if r.uid().as_deref() == Some(a.reservation.as_str()) => Holder::Holds,
            Some(_) => Holder::Orphaned(format!("consumer {who} holds another slot")),
            None => Holder::Assigning,
        },
    }
}

/// Reconciles one MaskReservation.
pub(crate) async fn reconcile(
    r: Arc<MaskReservation>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = ns_of(r.as_ref(), KIND)?;
    let api: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &ns);
    if r.meta().deletion_timestamp.is_some() {
        return release_legacy(&r, &api, &ctx).await;
    }
    ctx.adopt_finalizers(&api, KIND, r.as_ref(), None).await?;
    let name = r.name_any();
    let cached = ctx
        .consumers
        .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace));
    let mut holder = judge(&r, cached.as_deref());
    if matches!(holder, Holder::Orphaned(_)) && ctx.scope.contains(&r.spec.namespace) {
        // Never reclaim on a possibly stale cache alone.
        let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &r.spec.namespace);
        let fresh = ctx.get_opt(&capi, "MaskConsumer", &r.spec.name).await?;
        holder = judge(&r, fresh.as_ref());
    } else if matches!(holder, Holder::Orphaned(_)) {
        // The consumer's namespace is outside this controller's scope: leave it alone.
        return Ok(Action::await_change());
    }
    match holder {
        Holder::Orphaned(why) => {
            ctx.delete_if(&api, KIND, &name, r.uid().as_deref()).await?;
            ctx.metrics().action("reclaim");
            let owner = r
                .owner_references()
                .iter()
                .find(|o| o.kind == "MaskProvider")
                .map(|o| o.name.clone());
            if let Some(p) = owner.and_then(|p| ctx.provider(&ns, &p)) {
                ctx.event(
                    p.as_ref(),
                    EventType::Normal,
                    "SlotReclaimed",
                    "Reclaim",
                    format!("reservation {name} reclaimed: {why}"),
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Holder::Assigning => {
            // Shown as Pending (no status yet). The consumer records or adopts
            // it on its next reconcile, which this reservation's creation triggers.
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Holder::Holds => {
            if r.status.as_ref().and_then(|s| s.phase) != Some(ReservationPhase::Active) {
                let message = format!("held by consumer {}/{}", r.spec.namespace, r.spec.name);
                ctx.patch_status(&api, KIND, &name, json!({"status": {
                    "phase": ReservationPhase::Active, "message": message, "lastUpdated": now_rfc3339()}})).await?;
            }
            Ok(Action::await_change())
        }
    }
}

/// A reservation being deleted needs nothing from us, unless the original
/// vpn-operator's finalizer holds it: then, as the original did, the slot is
/// freed only once its consumer (and with it every Pod using the
/// credentials) is gone — the consumer is deleted, and its deletion wakes
/// this reconcile to remove the finalizer.
async fn release_legacy(
    r: &MaskReservation,
    api: &Api<MaskReservation>,
    ctx: &Ctx,
) -> Result<Action, ControllerError> {
    if !finalizers::awaits_release(r.finalizers(), None) {
        return Ok(Action::await_change());
    }
    if !ctx.scope.contains(&r.spec.namespace) {
        // Its consumer is out of sight: whoever watches that namespace decides.
        return Ok(Action::await_change());
    }
    let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &r.spec.namespace);
    let fresh = ctx.get_opt(&capi, "MaskConsumer", &r.spec.name).await?;
    match judge(r, fresh.as_ref()) {
        Holder::Holds => {
            let c = fresh
                .as_ref()
                .filter(|c| c.meta().deletion_timestamp.is_none());
            if let Some(c) = c {
                ctx.event(
                    c,
                    EventType::Warning,
                    "SlotLost",
                    "Unassign",
                    format!(
                        "reservation {}/{} is being deleted; deleting this consumer so its Mask is reassigned",
                        r.namespace().unwrap_or_default(),
                        r.name_any()
                    ),
                )
                .await;
                ctx.delete_if(&capi, "MaskConsumer", &r.spec.name, Some(&r.spec.uid))
                    .await?;
                ctx.metrics().action("unassign");
            }
            // The consumer's deletion wakes this reconcile; the timer is a safety net.
            Ok(Action::requeue(Duration::from_secs(5)))
        }
        Holder::Assigning | Holder::Orphaned(_) => {
            ctx.release_finalizers(api, KIND, r, None).await?;
            Ok(Action::await_change())
        }
    }
}

/// Whether `r` belongs to `provider` (by owner reference).
pub(crate) fn owned_by(r: &MaskReservation, provider: &MaskProvider) -> bool {
    r.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == provider.uid().as_ref())
}
