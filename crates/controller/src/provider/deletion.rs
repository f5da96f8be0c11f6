//! A provider being deleted: every consumer is unassigned, the reservations
//! whose holder is gone are freed, and only when none is left does the
//! finalizer go (pure).

use std::time::Duration;

use kube::{Resource, ResourceExt};
use vpno_api::{MaskProviderStatus, ProviderPhase};

use super::decide::{event, verify_mask_target};
use super::observe::{Observed, Unassigning};
use crate::consumer::Decided;
use crate::effect::{Effect, Kind, Propagation, StatusWrite, status_changed, target_of};
use crate::plan::{PROVIDER_FINALIZER, finalizers};

/// What to do about a provider being deleted.
pub(crate) fn decide(o: &Observed, u: &Unassigning) -> Decided {
    if !u.awaits {
        return Decided::wait(Vec::new());
    }
    let p = o.provider.as_ref();
    let mut effects = Vec::new();
    if p.phase() != ProviderPhase::Terminating {
        let desired = MaskProviderStatus {
            phase: Some(ProviderPhase::Terminating),
            message: Some("unassigning consumers before deletion".into()),
            last_updated: Some(jiff::Timestamp::now().to_string()),
            ..p.status.clone().unwrap_or_default()
        };
        if status_changed(p.status.as_ref(), &desired) {
            effects.push(Effect::PatchStatus {
                target: target_of(Kind::MaskProvider, p),
                status: StatusWrite::Provider {
                    uid: o.uid.clone(),
                    current: p.status.clone().map(Box::new),
                    desired: Box::new(desired),
                },
            });
        }
    }
    effects.push(Effect::DeleteIf {
        target: verify_mask_target(o),
        uid: None,
        propagation: Propagation::Background,
    });
    for c in u
        .victims
        .iter()
        .filter(|c| c.meta().deletion_timestamp.is_none())
    {
        effects.push(event(
            c.as_ref(),
            true,
            "ProviderDeleted",
            "Unassign",
            format!(
                "provider {}/{} is being deleted; this consumer is deleted and its Mask reassigned",
                o.namespace,
                p.name_any()
            ),
        ));
        effects.push(Effect::DeleteIf {
            target: target_of(Kind::MaskConsumer, c.as_ref()),
            uid: c.uid(),
            propagation: Propagation::Background,
        });
        effects.push(Effect::Count("unassign"));
    }
    for r in &u.orphaned {
        effects.push(Effect::DeleteIf {
            target: target_of(Kind::MaskReservation, r),
            uid: r.uid(),
            propagation: Propagation::Background,
        });
    }
    if u.reservations_left > 0 || u.victims_present {
        // Reservation and consumer deletions trigger this reconcile; the timer is a safety net.
        return Decided::after(effects, Duration::from_secs(2));
    }
    effects.push(Effect::ShowSlots {
        provider: format!("{}/{}", o.namespace, p.name_any()),
        counts: None,
    });
    if let Some(new) = finalizers::released(p.finalizers(), Some(PROVIDER_FINALIZER)) {
        effects.push(Effect::SetFinalizers {
            target: target_of(Kind::MaskProvider, p),
            current: p.finalizers().to_vec(),
            new,
        });
    }
    Decided::wait(effects)
}
