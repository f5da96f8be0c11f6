//! MaskGateway controller: per MaskGateway, a Mask per replica, a gateway
//! Pod per Mask that holds a slot (owned by its MaskConsumer, so the slot is
//! freed only once the Pod is gone), router Pods with their account and
//! heartbeat key, each node's slice of the network, and the status.
//!
//! observe ([`observe`]: stores, plus the credentials' key names and the
//! discovered service range) → [`decide`] (pure) → effects, carried out by
//! the executor. Deleting a MaskGateway needs no finalizer: its Masks,
//! routers and their objects are owned by it, and each gateway Pod goes
//! with its MaskConsumer (whose finalizer releases the slot after the Pod).

pub(crate) mod agents;
mod decide;
pub(crate) mod discovery;
mod network;
mod observe;
mod render;
mod replicas;
mod status;
pub(crate) mod triggers;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use vpno_api::MaskGateway;

pub(crate) use decide::{Decision, decide};
pub use render::PodImages;

use crate::context::Ctx;
use crate::effect::Executor;
use crate::error::ControllerError;

/// How soon a MaskGateway that waits on something outside the watches
/// (a provider Secret gaining a slot's key, the service range) is looked at again.
pub(crate) const RECHECK: Duration = Duration::from_secs(30);

/// Reconciles one MaskGateway.
pub(crate) async fn reconcile(
    gw: Arc<MaskGateway>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let observed = observe::observe(gw, &ctx, ctx.as_ref()).await?;
    let Decision { effects, recheck } = decide(&observed);
    ctx.apply_all(effects).await?;
    Ok(match recheck {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

#[cfg(test)]
pub(crate) mod tests;
