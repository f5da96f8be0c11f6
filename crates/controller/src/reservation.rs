//! MaskReservation controller: marks held reservations Active and reclaims
//! reservations whose consumer is gone or is another object now.
//!
//! observe (the reservation, its consumer from the cache; a fresh GET before
//! anything is reclaimed) → [`decide`] (pure) → effects.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::{
    MaskConsumer, MaskProvider, MaskReservation, MaskReservationStatus, ReservationPhase,
};

use crate::context::{Ctx, ns_of};
use crate::effect::{
    Effect, EventNote, Executor, Kind, Propagation, StatusWrite, regarding, status_changed,
    target_of,
};
use crate::error::ControllerError;
use crate::plan::finalizers;

const KIND: &str = "MaskReservation";

/// How the reservation relates to its consumer.
#[derive(Debug, PartialEq, Eq)]
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

/// What the reservation controller decides on.
pub(crate) struct Observed {
    pub reservation: Arc<MaskReservation>,
    /// The consumer named in the spec: from the cache, or fresh once `confirmed`.
    pub consumer: Option<MaskConsumer>,
    /// Whether `consumer` was read from the API server just now.
    pub confirmed: bool,
    /// Whether the consumer's namespace is watched by this controller.
    pub in_scope: bool,
    /// The owning provider (for Events).
    pub provider: Option<Arc<MaskProvider>>,
}

impl Observed {
    /// Whether the decision must rest on a fresh read of the consumer: never
    /// reclaim, or release a deleted reservation, on a possibly stale cache.
    fn needs_fresh_consumer(&self) -> bool {
        let r = self.reservation.as_ref();
        let deleting = r.meta().deletion_timestamp.is_some();
        let owed = if deleting {
            finalizers::awaits_release(r.finalizers(), None)
        } else {
            matches!(judge(r, self.consumer.as_ref()), Holder::Orphaned(_))
        };
        owed && self.in_scope && !self.confirmed
    }
}

/// Reconciles one MaskReservation.
pub(crate) async fn reconcile(
    r: Arc<MaskReservation>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = ns_of(r.as_ref(), KIND)?;
    let cached = ctx
        .consumers
        .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace));
    let provider = r
        .owner_references()
        .iter()
        .find(|o| o.kind == "MaskProvider")
        .and_then(|o| ctx.provider(&ns, &o.name));
    let mut o = Observed {
        in_scope: ctx.scope.contains(&r.spec.namespace),
        consumer: cached.as_deref().cloned(),
        confirmed: false,
        provider,
        reservation: r,
    };
    if o.needs_fresh_consumer() {
        // Act-then-look-again: the second decision rests on the API server.
        let r = o.reservation.as_ref();
        o.consumer = ctx.fresh_consumer(&r.spec.namespace, &r.spec.name).await?;
        o.confirmed = true;
    }
    let (effects, action) = decide(&o);
    ctx.apply_all(effects).await?;
    Ok(action)
}

/// What to do about a reservation, and when to look again.
pub(crate) fn decide(o: &Observed) -> (Vec<Effect>, Action) {
    let r = o.reservation.as_ref();
    let target = target_of(Kind::MaskReservation, r);
    let set_finalizers = |new: Vec<String>| Effect::SetFinalizers {
        target: target.clone(),
        current: r.finalizers().to_vec(),
        new,
    };
    if r.meta().deletion_timestamp.is_some() {
        return decide_deleted(o, set_finalizers);
    }
    let mut out: Vec<Effect> = finalizers::adopted(r.finalizers(), None)
        .map(set_finalizers)
        .into_iter()
        .collect();
    match judge(r, o.consumer.as_ref()) {
        // Outside this controller's scope, or not confirmed: leave it alone.
        Holder::Orphaned(_) if !o.in_scope || !o.confirmed => (out, Action::await_change()),
        Holder::Orphaned(why) => {
            out.push(Effect::DeleteIf {
                target,
                uid: r.uid(),
                propagation: Propagation::Background,
            });
            out.push(Effect::Count("reclaim"));
            if let Some(p) = &o.provider {
                out.push(Effect::Event(EventNote {
                    regarding: regarding(p.as_ref()),
                    warning: false,
                    reason: "SlotReclaimed".into(),
                    action: "Reclaim".into(),
                    note: format!("reservation {} reclaimed: {why}", r.name_any()),
                }));
            }
            (out, Action::await_change())
        }
        // Shown as Pending (no status yet). The consumer records or adopts
        // it on its next reconcile, which this reservation's creation triggers.
        Holder::Assigning => (out, Action::requeue(Duration::from_secs(30))),
        Holder::Holds => {
            let desired = MaskReservationStatus {
                phase: Some(ReservationPhase::Active),
                message: Some(format!(
                    "held by consumer {}/{}",
                    r.spec.namespace, r.spec.name
                )),
                last_updated: None,
            };
            if status_changed(r.status.as_ref(), &desired) {
                out.push(Effect::PatchStatus {
                    target,
                    status: StatusWrite::Reservation(desired),
                });
            }
            (out, Action::await_change())
        }
    }
}

/// A reservation being deleted needs nothing from us, unless the original
/// vpn-operator's finalizer holds it: then, as the original did, the slot is
/// freed only once its consumer (and with it every Pod using the
/// credentials) is gone — the consumer is deleted, and its deletion wakes
/// this reconcile to remove the finalizer.
fn decide_deleted(
    o: &Observed,
    set_finalizers: impl Fn(Vec<String>) -> Effect,
) -> (Vec<Effect>, Action) {
    let r = o.reservation.as_ref();
    // Not ours to release, or its consumer is out of sight (whoever watches
    // that namespace decides).
    if !finalizers::awaits_release(r.finalizers(), None) || !o.in_scope || !o.confirmed {
        return (Vec::new(), Action::await_change());
    }
    match judge(r, o.consumer.as_ref()) {
        Holder::Holds => {
            let mut out = Vec::new();
            if let Some(c) = o
                .consumer
                .as_ref()
                .filter(|c| c.meta().deletion_timestamp.is_none())
            {
                out.push(Effect::Event(EventNote {
                    regarding: regarding(c),
                    warning: true,
                    reason: "SlotLost".into(),
                    action: "Unassign".into(),
                    note: format!(
                        "reservation {}/{} is being deleted; deleting this consumer so its Mask is reassigned",
                        r.namespace().unwrap_or_default(),
                        r.name_any()
                    ),
                }));
                out.push(Effect::DeleteIf {
                    target: target_of(Kind::MaskConsumer, c),
                    uid: Some(r.spec.uid.clone()),
                    propagation: Propagation::Background,
                });
                out.push(Effect::Count("unassign"));
            }
            // The consumer's deletion wakes this reconcile; the timer is a safety net.
            (out, Action::requeue(Duration::from_secs(5)))
        }
        Holder::Assigning | Holder::Orphaned(_) => (
            finalizers::released(r.finalizers(), None)
                .map(set_finalizers)
                .into_iter()
                .collect(),
            Action::await_change(),
        ),
    }
}

/// Whether `r` belongs to `provider` (by owner reference).
pub(crate) fn owned_by(r: &MaskReservation, provider: &MaskProvider) -> bool {
    r.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == provider.uid().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effect::tests::Recording;
    use crate::index::tests::{consumer, provider, reservation};
    use crate::plan::LEGACY_FINALIZER;
    use vpno_api::AssignedProvider;

    fn held() -> (MaskReservation, MaskConsumer) {
        let r = reservation("vpn", "p-0", "pu", ("apps", "c", "cu"));
        let mut c = consumer("apps", "c", "cu", Some("pu"));
        c.status.as_mut().unwrap().provider = Some(AssignedProvider {
            reservation: r.uid().unwrap(),
            ..Default::default()
        });
        (r, c)
    }

    fn observed(r: MaskReservation, c: Option<MaskConsumer>) -> Observed {
        Observed {
            reservation: Arc::new(r),
            consumer: c,
            confirmed: false,
            in_scope: true,
            provider: Some(Arc::new(provider("vpn", "p", "pu", "creds"))),
        }
    }

    /// Runs the reconciler's two steps against the recording executor:
    /// the fresh read when needed, then the decision.
    async fn run(mut o: Observed, exec: &Recording) -> (Vec<Effect>, Action) {
        if o.needs_fresh_consumer() {
            let r = o.reservation.clone();
            o.consumer = exec
                .fresh_consumer(&r.spec.namespace, &r.spec.name)
                .await
                .unwrap();
            o.confirmed = true;
        }
        let (effects, action) = decide(&o);
        exec.apply_all(effects).await.unwrap();
        (exec.taken(), action)
    }

    #[tokio::test]
    async fn a_held_reservation_is_marked_active_once() {
        let (mut r, c) = held();
        let exec = Recording::default();
        let (effects, _) = run(observed(r.clone(), Some(c.clone())), &exec).await;
        assert!(matches!(
            effects.as_slice(),
            [Effect::PatchStatus { status: StatusWrite::Reservation(s), .. }]
                if s.phase == Some(ReservationPhase::Active)
        ));
        r.status = Some(MaskReservationStatus {
            phase: Some(ReservationPhase::Active),
            message: Some("held by consumer apps/c".into()),
            last_updated: Some("then".into()),
        });
        let (effects, _) = run(observed(r, Some(c)), &Recording::default()).await;
        assert!(effects.is_empty(), "{effects:?}");
    }

    #[tokio::test]
    async fn an_orphan_is_reclaimed_only_after_the_api_server_confirms() {
        let (r, c) = held();
        // The cache has not seen the consumer, but the API server has it: kept.
        let exec = Recording::default();
        exec.consumers
            .lock()
            .unwrap()
            .insert(("apps".into(), "c".into()), c);
        let (effects, _) = run(observed(r.clone(), None), &exec).await;
        assert!(
            effects
                .iter()
                .all(|e| !matches!(e, Effect::DeleteIf { .. })),
            "{effects:?}"
        );
        // Gone for real: reclaimed, counted, and the provider hears of it.
        let (effects, _) = run(observed(r, None), &Recording::default()).await;
        assert!(
            matches!(
                effects.as_slice(),
                [Effect::DeleteIf { target, .. }, Effect::Count("reclaim"), Effect::Event(e)]
                    if target.kind == Kind::MaskReservation && e.reason == "SlotReclaimed"
            ),
            "{effects:?}"
        );
    }

    #[tokio::test]
    async fn an_orphan_outside_the_scope_is_left_alone() {
        let (r, _) = held();
        let mut o = observed(r, None);
        o.in_scope = false;
        let (effects, _) = run(o, &Recording::default()).await;
        assert!(effects.is_empty(), "{effects:?}");
    }

    #[tokio::test]
    async fn a_deleted_original_reservation_waits_for_its_consumer_then_lets_go() {
        let (mut r, c) = held();
        r.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
        r.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let exec = Recording::default();
        exec.consumers
            .lock()
            .unwrap()
            .insert(("apps".into(), "c".into()), c);
        let (effects, action) = run(observed(r.clone(), None), &exec).await;
        assert!(
            matches!(
                effects.as_slice(),
                [Effect::Event(e), Effect::DeleteIf { target, .. }, Effect::Count("unassign")]
                    if e.reason == "SlotLost" && target.kind == Kind::MaskConsumer
            ),
            "{effects:?}"
        );
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        let (effects, _) = run(observed(r, None), &Recording::default()).await;
        assert!(
            matches!(
                effects.as_slice(),
                [Effect::SetFinalizers { new, .. }] if new.is_empty()
            ),
            "{effects:?}"
        );
    }
}
