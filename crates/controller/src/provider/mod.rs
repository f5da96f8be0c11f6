//! MaskProvider controller: phase and `activeSlots`, verification through a
//! Mask of its own, eviction after `maxSlots` is lowered, and unassigning
//! every consumer before the provider goes away.
//!
//! [`observe`] → [`decide::decide_live`] / [`deletion::decide`] (pure) →
//! effects. Creating the verification Pod acts and then looks again: a Pod
//! the API server rejects (bad overrides) turns the verification decision
//! into a failure before [`decide::finish`] writes the status.

mod decide;
mod deletion;
mod observe;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use kube::runtime::controller::Action;
use vpno_api::MaskProvider;

use crate::context::Ctx;
use crate::effect::Executor;
use crate::error::ControllerError;
use decide::PodImages;
use observe::{Observed, State};

/// Reconciles one MaskProvider.
pub(crate) async fn reconcile(
    p: Arc<MaskProvider>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let observed = observe::observe(p, &ctx).await?;
    let images = PodImages {
        gluetun: &ctx.config.verify_images.gluetun,
        curl: &ctx.config.verify_images.curl,
        ip_url: &ctx.config.verify_ip_url,
    };
    run(&observed, &images, ctx.as_ref()).await
}

/// Decides on `o` and carries the decision out.
async fn run<E: Executor>(
    o: &Observed,
    images: &PodImages<'_>,
    ex: &E,
) -> Result<Action, ControllerError> {
    let live = match &o.state {
        State::Deleting(u) => {
            let d = deletion::decide(o, u);
            ex.apply_all(d.effects).await?;
            return Ok(d.next.action());
        }
        State::Live(live) => live,
    };
    let step = decide::decide_live(o, live, images);
    ex.apply_all(step.effects).await?;
    let mut decision = step.decision;
    if let Some(pod) = &step.create_pod
        && let Err(why) = ex.create_verify_pod(pod).await?
    {
        decision = decide::failed(why, &step.settings);
    }
    let d = decide::finish(o, live, decision, &step.settings);
    ex.apply_all(d.effects).await?;
    Ok(d.next.action())
}
