//! Mask controller: gives each Mask its MaskConsumer and shows the
//! consumer's progress on the Mask.
//!
//! observe (the Mask and, from the cache, its consumer) → [`decide`] (pure)
//! → effects, carried out by the executor.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::{Mask, MaskConsumer, MaskConsumerSpec, MaskPhase, MaskStatus};

use crate::context::{Ctx, controller_ref, ns_of};
use crate::effect::{
    Effect, EventNote, Executor, Kind, NewObject, Propagation, StatusWrite, mask_target, regarding,
    status_changed, target_of,
};
use crate::error::ControllerError;
use crate::plan::finalizers;
use crate::plan::status::mask_status_from_consumer;
use crate::plan::{CONSUMER_FINALIZER, PIN_ANNOTATION};

const KIND: &str = "Mask";

/// What the Mask controller decides on.
pub(crate) struct Observed {
    /// The Mask.
    pub mask: Arc<Mask>,
    /// The MaskConsumer of the same name and namespace, from the cache.
    pub consumer: Option<Arc<MaskConsumer>>,
}

/// Reconciles one Mask.
pub(crate) async fn reconcile(mask: Arc<Mask>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = ns_of(mask.as_ref(), KIND)?;
    let consumer = ctx
        .consumers
        .get(&ObjectRef::new(&mask.name_any()).within(&ns));
    let observed = Observed { mask, consumer };
    ctx.apply_all(decide(&observed)).await?;
    Ok(Action::await_change())
}

/// What to do about a Mask.
pub(crate) fn decide(o: &Observed) -> Vec<Effect> {
    let mask = o.mask.as_ref();
    let target = mask_target(mask);
    let set_finalizers = |new: Vec<String>| Effect::SetFinalizers {
        target: target.clone(),
        current: mask.finalizers().to_vec(),
        new,
    };
    if mask.meta().deletion_timestamp.is_some() {
        // The consumer controller deletes the consumer at once (and the
        // garbage collector would); the consumer's finalizer releases the
        // slot. A Mask the original vpn-operator made waits for nothing else.
        return finalizers::released(mask.finalizers(), None)
            .map(set_finalizers)
            .into_iter()
            .collect();
    }
    let mut out: Vec<Effect> = finalizers::adopted(mask.finalizers(), None)
        .map(set_finalizers)
        .into_iter()
        .collect();
    match &o.consumer {
        // A consumer of an earlier Mask of the same name: wait until it is gone.
        Some(c) if !owned_by(c, mask) => {
            if c.meta().deletion_timestamp.is_none() {
                out.push(Effect::DeleteIf {
                    target: target_of(Kind::MaskConsumer, c.as_ref()),
                    uid: c.uid(),
                    propagation: Propagation::Background,
                });
            }
            return out;
        }
        Some(c) => {
            if c.spec.providers != mask.spec.providers && c.meta().deletion_timestamp.is_none() {
                out.push(Effect::SetConsumerProviders {
                    target: target_of(Kind::MaskConsumer, c.as_ref()),
                    providers: mask.spec.providers.clone(),
                });
            }
        }
        None => {
            if let Some(c) = new_consumer(mask) {
                out.push(Effect::Create(NewObject::MaskConsumer(Box::new(c))));
                out.push(Effect::Count("create_consumer"));
            }
            return out;
        }
    }
    out.extend(mirror_status(mask, o.consumer.as_deref()));
    out
}

fn owned_by(c: &MaskConsumer, mask: &Mask) -> bool {
    let uid = mask.uid();
    c.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

/// The consumer a Mask gets: same name, owned by the Mask, with the
/// consumer finalizer set at creation (saves a write) and the Mask's pin.
fn new_consumer(mask: &Mask) -> Option<MaskConsumer> {
    let mut c = MaskConsumer::new(
        &mask.name_any(),
        MaskConsumerSpec {
            providers: mask.spec.providers.clone(),
        },
    );
    c.metadata.namespace = mask.namespace();
    c.metadata.owner_references = Some(vec![controller_ref(mask)?]);
    c.metadata.finalizers = Some(vec![CONSUMER_FINALIZER.to_string()]);
    if let Some(pin) = mask.annotations().get(PIN_ANNOTATION) {
        c.metadata.annotations = Some([(PIN_ANNOTATION.to_string(), pin.clone())].into());
    }
    Some(c)
}

/// The Mask shows its consumer's phase and message (an Event when it newly
/// has no provider).
fn mirror_status(mask: &Mask, consumer: Option<&MaskConsumer>) -> Vec<Effect> {
    let observed = consumer.map(|c| {
        (
            c.status.as_ref().and_then(|s| s.phase),
            c.status.as_ref().and_then(|s| s.message.as_deref()),
            c.meta().deletion_timestamp.is_some(),
        )
    });
    let Some((phase, message)) = mask_status_from_consumer(observed) else {
        return Vec::new();
    };
    let desired = MaskStatus {
        phase: Some(phase),
        message: Some(message.clone()),
        last_updated: None,
    };
    let current = mask.status.as_ref();
    if !status_changed(current, &desired) {
        return Vec::new();
    }
    let mut out = vec![Effect::PatchStatus {
        target: mask_target(mask),
        status: StatusWrite::Mask(desired),
    }];
    if phase == MaskPhase::ErrNoProviders && current.and_then(|s| s.phase) != Some(phase) {
        out.push(Effect::Event(EventNote {
            regarding: regarding(mask),
            warning: true,
            reason: "NoProviders".into(),
            action: "Assign".into(),
            note: message,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effect::tests::Recording;
    use crate::plan::LEGACY_FINALIZER;
    use vpno_api::{MaskConsumerStatus, MaskSpec};

    fn mask(name: &str) -> Mask {
        let mut m = Mask::new(name, MaskSpec::default());
        m.metadata.namespace = Some("apps".into());
        m.metadata.uid = Some(format!("uid-{name}"));
        m
    }

    fn consumer_of(m: &Mask, phase: Option<MaskPhase>, message: &str) -> MaskConsumer {
        let mut c = new_consumer(m).unwrap();
        c.metadata.uid = Some(format!("c-{}", m.name_any()));
        c.status = phase.map(|p| MaskConsumerStatus {
            phase: Some(p),
            message: Some(message.into()),
            ..Default::default()
        });
        c
    }

    async fn run(o: Observed) -> Vec<Effect> {
        let exec = Recording::default();
        exec.apply_all(decide(&o)).await.unwrap();
        exec.taken()
    }

    #[tokio::test]
    async fn a_new_mask_gets_its_consumer_and_nothing_else() {
        let m = mask("m");
        let effects = run(Observed {
            mask: Arc::new(m.clone()),
            consumer: None,
        })
        .await;
        let [
            Effect::Create(NewObject::MaskConsumer(c)),
            Effect::Count("create_consumer"),
        ] = effects.as_slice()
        else {
            panic!("{effects:?}");
        };
        assert_eq!(c.name_any(), "m");
        assert_eq!(c.owner_references()[0].uid, "uid-m");
        assert_eq!(c.finalizers(), [CONSUMER_FINALIZER]);
    }

    #[tokio::test]
    async fn the_mask_mirrors_its_consumer_once_and_reports_no_providers() {
        let mut m = mask("m");
        let c = consumer_of(&m, Some(MaskPhase::ErrNoProviders), "no eligible provider");
        let effects = run(Observed {
            mask: Arc::new(m.clone()),
            consumer: Some(Arc::new(c.clone())),
        })
        .await;
        assert!(matches!(
            &effects[0],
            Effect::PatchStatus { status: StatusWrite::Mask(s), .. }
                if s.phase == Some(MaskPhase::ErrNoProviders)
        ));
        assert!(matches!(&effects[1], Effect::Event(e) if e.reason == "NoProviders"));
        // Already showing it (another timestamp): nothing to write.
        m.status = Some(MaskStatus {
            phase: Some(MaskPhase::ErrNoProviders),
            message: Some("no eligible provider".into()),
            last_updated: Some("earlier".into()),
        });
        let effects = run(Observed {
            mask: Arc::new(m),
            consumer: Some(Arc::new(c)),
        })
        .await;
        assert!(effects.is_empty(), "{effects:?}");
    }

    #[tokio::test]
    async fn edited_providers_reach_the_consumer_and_a_stale_consumer_is_deleted() {
        let mut m = mask("m");
        let c = consumer_of(&m, None, "");
        m.spec.providers = Some(vec!["us".into()]);
        let effects = run(Observed {
            mask: Arc::new(m.clone()),
            consumer: Some(Arc::new(c.clone())),
        })
        .await;
        assert!(matches!(
            effects.as_slice(),
            [Effect::SetConsumerProviders { providers: Some(p), .. }] if p == &["us".to_string()]
        ));
        let mut stale = c;
        stale.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-earlier".into();
        let effects = run(Observed {
            mask: Arc::new(m),
            consumer: Some(Arc::new(stale)),
        })
        .await;
        assert!(matches!(
            effects.as_slice(),
            [Effect::DeleteIf { target, uid: Some(u), .. }] if target.kind == Kind::MaskConsumer && u == "c-m"
        ));
    }

    #[tokio::test]
    async fn the_original_finalizer_is_dropped_live_and_on_deletion() {
        let mut m = mask("m");
        m.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
        let c = consumer_of(&m, None, "");
        let effects = run(Observed {
            mask: Arc::new(m.clone()),
            consumer: Some(Arc::new(c)),
        })
        .await;
        assert!(matches!(
            effects.as_slice(),
            [Effect::SetFinalizers { new, .. }] if new.is_empty()
        ));
        m.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let effects = run(Observed {
            mask: Arc::new(m),
            consumer: None,
        })
        .await;
        assert!(matches!(
            effects.as_slice(),
            [Effect::SetFinalizers { current, new, .. }] if current == &[LEGACY_FINALIZER] && new.is_empty()
        ));
    }
}
