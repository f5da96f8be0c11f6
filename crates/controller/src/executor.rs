//! The one [`Executor`] that talks to the API server: every `Api`, kind name,
//! metric and the 404/409 rules of the effects live here.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::Event;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vpno_api::{Mask, MaskConsumer, MaskGateway, MaskReservation};

use crate::context::{Ctx, finalizer_patch};
use crate::effect::{
    CredentialKeys, Effect, EventNote, Executor, Kind, NewObject, RANDOM_KEY_LEN, RandomKey,
    StatusWrite, Target,
};
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
            Kind::MaskGateway => {
                let $api = $ctx.api::<MaskGateway>($target);
                $body
            }
            Kind::Pod => {
                let $api = $ctx.api::<Pod>($target);
                $body
            }
        }
    };
}

impl Executor for Ctx {
    async fn apply(&self, effect: Effect) -> Result<(), ControllerError> {
        match effect {
            Effect::Create(new) => self.create_new(new).await,
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
            Effect::SetProviders { target, providers } => {
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

    async fn credential_keys(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<CredentialKeys>, ControllerError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = self.get_opt(&api, "Secret", name).await? else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let keys = data
            .iter()
            .filter(|(_, v)| !v.0.iter().all(u8::is_ascii_whitespace))
            .map(|(k, _)| k.clone())
            .collect();
        let vpn_type = data
            .get("VPN_TYPE")
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_ascii_lowercase());
        Ok(Some(CredentialKeys { keys, vpn_type }))
    }

    async fn service_cidr(&self) -> Option<String> {
        self.discover_service_cidr().await
    }

    async fn fetch_agents(&self, urls: Vec<String>) -> Vec<Option<String>> {
        self.shared.agents.get_all(&urls).await
    }
}

impl Ctx {
    /// Creates one new object in its namespace (see [`Effect::Create`]).
    async fn create_new(&self, new: NewObject) -> Result<(), ControllerError> {
        macro_rules! create {
            ($kind:literal, $obj:expr) => {{
                let ns = $obj.namespace().unwrap_or_default();
                self.create(&Api::namespaced(self.client.clone(), &ns), $kind, &*$obj)
                    .await
            }};
        }
        match new {
            NewObject::MaskConsumer(c) => create!("MaskConsumer", c),
            NewObject::Mask(m) => create!("Mask", m),
            NewObject::Pod(p) => create!("Pod", p),
            NewObject::ServiceAccount(sa) => create!("ServiceAccount", sa),
            NewObject::Role(r) => create!("Role", r),
            NewObject::RoleBinding(rb) => create!("RoleBinding", rb),
            NewObject::RandomKey(k) => {
                let secret = random_key_secret(&k);
                create!("Secret", (&secret))
            }
        }
    }

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
            StatusWrite::Gateway { mut patch, .. } => {
                if let Some(map) = patch.as_object_mut() {
                    map.insert("lastUpdated".into(), serde_json::json!(now));
                }
                Ok(patch)
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

/// The Secret a [`RandomKey`] becomes, with fresh random bytes (the one
/// impure step of creating it; an existing Secret of that name is kept).
fn random_key_secret(k: &RandomKey) -> Secret {
    use rand::RngCore as _;
    let mut bytes = vec![0u8; RANDOM_KEY_LEN];
    rand::rng().fill_bytes(&mut bytes);
    Secret {
        metadata: ObjectMeta {
            name: Some(k.name.clone()),
            namespace: Some(k.namespace.clone()),
            labels: Some(k.labels.clone()),
            owner_references: Some(vec![k.owner.clone()]),
            ..Default::default()
        },
        data: Some([(k.key.clone(), ByteString(bytes))].into()),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}
