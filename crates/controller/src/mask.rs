//! Mask controller: gives each Mask its MaskConsumer and shows the
//! consumer's progress on the Mask.

use std::sync::Arc;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vpno_api::{Mask, MaskConsumer, MaskConsumerSpec, MaskPhase};

use crate::context::{Ctx, controller_ref, ns_of};
use crate::error::{ControllerError, is_namespace_terminating, is_status};
use crate::plan::status::{mask_status_from_consumer, now_rfc3339};
use crate::plan::{CONSUMER_FINALIZER, PIN_ANNOTATION};

const KIND: &str = "Mask";

/// Reconciles one Mask.
pub(crate) async fn reconcile(mask: Arc<Mask>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = ns_of(mask.as_ref(), KIND)?;
    let api: Api<Mask> = Api::namespaced(ctx.client.clone(), &ns);
    if mask.meta().deletion_timestamp.is_some() {
        // The consumer controller deletes the consumer at once (and the
        // garbage collector would); the consumer's finalizer releases the
        // slot. A Mask the original vpn-operator made waits for nothing else.
        ctx.release_finalizers(&api, KIND, mask.as_ref(), None)
            .await?;
        return Ok(Action::await_change());
    }
    ctx.adopt_finalizers(&api, KIND, mask.as_ref(), None)
        .await?;
    let name = mask.name_any();
    let consumer = ctx.consumers.get(&ObjectRef::new(&name).within(&ns));
    let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &ns);
    let mask_uid = mask.uid();
    let consumer = match consumer {
        // A consumer of an earlier Mask of the same name: wait until it is gone.
        Some(c)
            if !c
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == mask_uid.as_ref()) =>
        {
            if c.meta().deletion_timestamp.is_none() {
                ctx.delete_if(&capi, "MaskConsumer", &name, c.uid().as_deref())
                    .await?;
            }
            return Ok(Action::await_change());
        }
        Some(c) => {
            if c.spec.providers != mask.spec.providers && c.meta().deletion_timestamp.is_none() {
                let patch = json!({"spec": {"providers": mask.spec.providers}});
                ctx.metrics()
                    .write(
                        "MaskConsumer",
                        capi.patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch)),
                    )
                    .await
                    .map_err(|e| {
                        ControllerError::kube(format!("updating MaskConsumer {ns}/{name}"), e)
                    })?;
            }
            Some(c)
        }
        None => {
            let mut c = MaskConsumer::new(
                &name,
                MaskConsumerSpec {
                    providers: mask.spec.providers.clone(),
                },
            );
            c.metadata.namespace = Some(ns.clone());
            c.metadata.owner_references = controller_ref(mask.as_ref()).map(|o| vec![o]);
            // Set at creation (saves a write); the consumer controller adds it too if missing.
            c.metadata.finalizers = Some(vec![CONSUMER_FINALIZER.to_string()]);
            if let Some(pin) = mask.annotations().get(PIN_ANNOTATION) {
                c.metadata.annotations = Some([(PIN_ANNOTATION.to_string(), pin.clone())].into());
            }
            match ctx
                .metrics()
                .write("MaskConsumer", capi.create(&PostParams::default(), &c))
                .await
            {
                Ok(_) => ctx.metrics().action("create_consumer"),
                Err(e) if is_status(&e, 409) => {}
                // The namespace is going away, and this Mask with it.
                Err(e) if is_namespace_terminating(&e) => return Ok(Action::await_change()),
                Err(e) => {
                    return Err(ControllerError::kube(
                        format!("creating MaskConsumer {ns}/{name}"),
                        e,
                    ));
                }
            }
            None
        }
    };
    let observed = consumer.as_ref().map(|c| {
        (
            c.status.as_ref().and_then(|s| s.phase),
            c.status.as_ref().and_then(|s| s.message.as_deref()),
            c.meta().deletion_timestamp.is_some(),
        )
    });
    let Some((phase, message)) = mask_status_from_consumer(observed) else {
        return Ok(Action::await_change());
    };
    let current = mask.status.as_ref();
    if current.and_then(|s| s.phase) != Some(phase)
        || current.and_then(|s| s.message.as_deref()) != Some(message.as_str())
    {
        match ctx.patch_status(&api, KIND, &name, json!({"status": {"phase": phase, "message": message, "lastUpdated": now_rfc3339()}})).await {
            Ok(_) => {}
            // Deleted meanwhile: nothing to show.
            Err(ControllerError::Kube { source, .. }) if is_status(&source, 404) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
        if phase == MaskPhase::ErrNoProviders && current.and_then(|s| s.phase) != Some(phase) {
            ctx.event(
                mask.as_ref(),
                EventType::Warning,
                "NoProviders",
                "Assign",
                message,
            )
            .await;
        }
    }
    Ok(Action::await_change())
}
