//! The one [`Executor`] that talks to the API server: every `Api`, kind name,
//! metric and the 404/409 rules of the effects live here.

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Event;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vpno_api::{Mask, MaskConsumer, MaskReservation};

use crate::context::{Ctx, finalizer_patch};
use crate::effect::{Effect, EventNote, Executor, Kind, NewObject, StatusWrite, Target};
use crate::error::{ControllerError, is_namespace_terminating, is_status};
use crate::plan::status::now_rfc3339;

/// Runs `$body` with `$api` bound to the `Api` of the target's kind.
macro_rules! by_kind {
    ($ctx:expr, $target:expr, |$api:ident| $body:expr) => {
        match $target.kind {
            Kind::Mask => {
                let $api = $ctx.api::<Mask>($target);
                $body
            }
            Kind::MaskConsumer => {
                let $api = $ctx.api::<MaskConsumer>($target);
                $body
            }
            Kind::MaskReservation => {
                let $api = $ctx.api::<MaskReservation>($target);
                $body
            }
        }
    };
}

impl Executor for Ctx {
    async fn apply(&self, effect: Effect) -> Result<(), ControllerError> {
        match effect {
            Effect::Create(NewObject::MaskConsumer(c)) => {
                let ns = c.namespace().unwrap_or_default();
                self.create(
                    &Api::<MaskConsumer>::namespaced(self.client.clone(), &ns),
                    "MaskConsumer",
                    &c,
                )
                .await
            }
            Effect::DeleteIf { target, uid } => {
                let (kind, uid) = (target.kind.name(), uid.as_deref());
                by_kind!(self, &target, |api| self
                    .delete_if(&api, kind, &target.name, uid)
                    .await)
            }
            Effect::PatchStatus { target, status } => {
                self.write_effect_status(&target, status).await
            }
            Effect::SetFinalizers {
                target,
                current,
                new,
            } => {
                let patch = finalizer_patch(&current, &new)?;
                self.patch_target(&target, Patch::<()>::Json(patch), "updating finalizers of")
                    .await
            }
            Effect::SetConsumerProviders { target, providers } => {
                let patch = serde_json::json!({"spec": {"providers": providers}});
                self.patch_target(&target, Patch::Merge(&patch), "updating")
                    .await
            }
            Effect::Event(note) => {
                self.publish(&note).await;
                Ok(())
            }
            Effect::Count(action) => {
                self.metrics().action(action);
                Ok(())
            }
        }
    }

    async fn fresh_consumer(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<MaskConsumer>, ControllerError> {
        let api: Api<MaskConsumer> = Api::namespaced(self.client.clone(), namespace);
        self.get_opt(&api, "MaskConsumer", name).await
    }
}

impl Ctx {
    fn api<K>(&self, target: &Target) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &target.namespace)
    }

    async fn create<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        obj: &K,
    ) -> Result<(), ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        match self
            .metrics()
            .write(kind, api.create(&PostParams::default(), obj))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) || is_namespace_terminating(&e) => Ok(()),
            Err(e) => Err(ControllerError::kube(
                format!(
                    "creating {kind} {}/{}",
                    obj.namespace().unwrap_or_default(),
                    obj.name_any()
                ),
                e,
            )),
        }
    }

    async fn write_effect_status(
        &self,
        target: &Target,
        status: StatusWrite,
    ) -> Result<(), ControllerError> {
        let now = Some(now_rfc3339());
        let body = match status {
            StatusWrite::Mask(mut s) => {
                s.last_updated = now;
                serde_json::to_value(s)
            }
            StatusWrite::Reservation(mut s) => {
                s.last_updated = now;
                serde_json::to_value(s)
            }
        }
        .map_err(|e| ControllerError::Finalizer(e.to_string()))?;
        let patch = serde_json::json!({ "status": body });
        let kind = target.kind.name();
        let pp = PatchParams::default();
        let res = by_kind!(self, target, |api| self
            .metrics()
            .write(
                kind,
                api.patch_status(&target.name, &pp, &Patch::Merge(&patch))
            )
            .await
            .map(|_| ()));
        match res {
            Ok(()) => Ok(()),
            // Deleted meanwhile: nothing to show.
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(ControllerError::kube(
                format!(
                    "writing status of {kind} {}/{}",
                    target.namespace, target.name
                ),
                e,
            )),
        }
    }

    async fn patch_target<P: Serialize + std::fmt::Debug>(
        &self,
        target: &Target,
        patch: Patch<P>,
        what: &str,
    ) -> Result<(), ControllerError> {
        let kind = target.kind.name();
        let pp = PatchParams::default();
        let res = by_kind!(self, target, |api| self
            .metrics()
            .write(kind, api.patch(&target.name, &pp, &patch))
            .await
            .map(|_| ()));
        match res {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(ControllerError::kube(
                format!("{what} {kind} {}/{}", target.namespace, target.name),
                e,
            )),
        }
    }

    /// Publishes an Event; failures are logged, never fatal.
    pub async fn publish(&self, note: &EventNote) {
        let ev = Event {
            type_: note.event_type(),
            reason: note.reason.clone(),
            note: Some(note.note.clone()),
            action: note.action.clone(),
            secondary: None,
        };
        let res = self
            .metrics()
            .write("Event", self.recorder.publish(&ev, &note.regarding))
            .await;
        if let Err(err) = res {
            tracing::warn!(reason = %note.reason, error = %err, "could not publish event");
        }
    }
}
