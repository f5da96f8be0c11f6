//! MaskConsumer controller: takes a slot for the consumer, copies the
//! credentials, and releases the slot only once the consumer and its Pods
//! are gone.
//!
//! [`observe`] (the cache, fresh reads where it may lag) → [`decide`] (pure)
//! → effects, carried out by the executor. Taking a slot acts and then looks
//! again: the executor creates reservations until one is created
//! ([`Executor::try_reserve`]), then a fresh read of the consumer (and of the
//! provider Secret) feeds the second decision, [`decide::complete`].

mod decide;
mod observe;
mod release;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use kube::runtime::controller::Action;
use vpno_api::MaskConsumer;

use crate::context::Ctx;
use crate::effect::{Effect, Executor};
use crate::error::ControllerError;
pub(crate) use decide::Decided;
use decide::{ReservePlan, Then};
use observe::{Candidate, Observed};

/// Reconciles one MaskConsumer.
pub(crate) async fn reconcile(
    consumer: Arc<MaskConsumer>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let observed = observe::observe(consumer, &ctx).await?;
    run(&observed, ctx.as_ref()).await
}

/// Decides on `o` and carries the decision out, with the act-then-look-again
/// steps of taking a slot.
async fn run<E: Executor>(o: &Observed, ex: &E) -> Result<Action, ControllerError> {
    let step = decide::decide(o);
    ex.apply_all(step.effects).await?;
    match step.then {
        Then::Done(next) => Ok(next.action()),
        Then::Complete(held) => complete(o, held, ex).await,
        Then::Reserve(plan) => take_slot(o, plan, ex).await,
    }
}

/// Creates reservations in the plan's order until one is created (someone
/// else holds the others), then records it.
async fn take_slot<E: Executor>(
    o: &Observed,
    plan: ReservePlan,
    ex: &E,
) -> Result<Action, ControllerError> {
    for attempt in &plan.attempts {
        match ex.try_reserve(&attempt.reservation).await? {
            Some(reservation) => {
                ex.apply(Effect::Count("assign")).await?;
                let held = Candidate {
                    provider: attempt.provider.clone(),
                    slot: attempt.slot,
                    reservation: Arc::new(reservation),
                };
                return complete(o, held, ex).await;
            }
            None => ex.apply(Effect::Count("reserve_conflict")).await?,
        }
    }
    let d = decide::unreserved(o, &plan);
    ex.apply_all(d.effects).await?;
    Ok(d.next.action())
}

/// The second look after a slot is held, and its decision.
async fn complete<E: Executor>(
    o: &Observed,
    held: Candidate,
    ex: &E,
) -> Result<Action, ControllerError> {
    let seen = observe::completion(o, held, ex).await?;
    let d = decide::complete(o, &seen);
    ex.apply_all(d.effects).await?;
    Ok(d.next.action())
}
