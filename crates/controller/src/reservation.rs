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
    if r.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ns_of(r.as_ref(), KIND)?;
    let api: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &ns);
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

/// Whether `r` belongs to `provider` (by owner reference).
pub(crate) fn owned_by(r: &MaskReservation, provider: &MaskProvider) -> bool {
    r.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == provider.uid().as_ref())
}
