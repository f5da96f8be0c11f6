//! The one [`Executor`] that talks to the API server: every `Api`, kind name,
//! metric and the 404/409 rules of the effects live here.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Event;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vpno_api::{Mask, MaskConsumer, MaskGateway, MaskProvider, MaskReservation};

use crate::context::{Ctx, finalizer_patch};
use crate::effect::{
    ApiObject, Effect, EventNote, Executor, Kind, NewObject, Propagation, RANDOM_KEY_LEN,
    RandomKey, StatusWrite, Target, status_patch,
};
use crate::error::{ControllerError, is_namespace_terminating, is_status};
use crate::plan::credentials::credentials_update;
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
            Kind::MaskProvider => {
                let $api = $ctx.api::<MaskProvider>($target);
                $body
            }
            Kind::Secret => {
                let $api = $ctx.api::<Secret>($target);
                $body
            }
            Kind::Pod => {
                let $api = $ctx.api::<Pod>($target);
                $body
            }
            Kind::Deployment => {
                let $api = $ctx.api::<Deployment>($target);
                $body
            }
            Kind::StatefulSet => {
                let $api = $ctx.api::<StatefulSet>($target);
                $body
            }
            Kind::DaemonSet => {
                let $api = $ctx.api::<DaemonSet>($target);
                $body
            }
            Kind::ReplicaSet => {
                let $api = $ctx.api::<ReplicaSet>($target);
                $body
            }
            Kind::Job => {
                let $api = $ctx.api::<Job>($target);
                $body
            }
        }
    };
}

impl Executor for Ctx {
    async fn apply(&self, effect: Effect) -> Result<(), ControllerError> {
        match effect {
            Effect::Create(new) => self.create_new(new).await,
            Effect::UpdateCredentials {
                copy,
                source_version,
            } => self.replace_credentials(&copy, source_version).await,
            Effect::DeleteIf {
                target,
                uid,
                propagation,
            } => {
                let (kind, uid) = (target.kind.name(), uid.as_deref());
                if target.kind == Kind::Secret {
                    self.copies_in_step.forget(&target.namespace, &target.name);
                }
                match propagation {
                    Propagation::Background => by_kind!(self, &target, |api| self
                        .delete_if(&api, kind, &target.name, uid)
                        .await),
                    Propagation::Foreground => by_kind!(self, &target, |api| self
                        .delete_foreground_if(&api, kind, &target.name, uid)
                        .await),
                }
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
            Effect::NoteCopyInStep {
                namespace,
                name,
                versions,
            } => {
                self.copies_in_step.record(&namespace, &name, versions);
                Ok(())
            }
            Effect::ShowSlots { provider, counts } => {
                self.config.metrics.show_slots(&provider, counts);
                Ok(())
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

    async fn service_cidr(&self) -> Option<String> {
        self.discover_service_cidr().await
    }

    async fn fetch_agents(&self, urls: Vec<String>) -> Vec<Option<String>> {
        self.shared.agents.get_all(&urls).await
    }

    async fn fresh<K: ApiObject>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, ControllerError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        self.get_opt(&api, kind_name::<K>(), name).await
    }

    async fn list_metadata<K: ApiObject>(
        &self,
        namespace: &str,
    ) -> Result<Vec<ObjectMeta>, ControllerError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let kind = kind_name::<K>();
        let list = self
            .metrics()
            .read(kind, api.list_metadata(&ListParams::default()))
            .await
            .map_err(|e| ControllerError::kube(format!("listing {kind}s in {namespace}"), e))?;
        Ok(list.items.into_iter().map(|o| o.metadata).collect())
    }

    async fn list<K: ApiObject>(&self, namespace: &str) -> Result<Vec<K>, ControllerError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let kind = kind_name::<K>();
        let list = self
            .metrics()
            .read(kind, api.list(&ListParams::default()))
            .await
            .map_err(|e| ControllerError::kube(format!("listing {kind}s in {namespace}"), e))?;
        Ok(list.items)
    }

    async fn create_verify_pod(&self, pod: &Pod) -> Result<Result<(), String>, ControllerError> {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match self
            .metrics()
            .write("Pod", api.create(&PostParams::default(), pod))
            .await
        {
            Ok(_) => {
                self.metrics().action("create_verify_pod");
                Ok(Ok(()))
            }
            Err(e) if is_status(&e, 409) => Ok(Ok(())),
            // The API server rejected the Pod: almost always bad overrides.
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => Ok(Err(format!(
                "the API server rejected the verification pod: {}",
                s.message
            ))),
            Err(e) => Err(ControllerError::kube(
                format!("creating Pod {ns}/{}", pod.name_any()),
                e,
            )),
        }
    }

    async fn try_reserve(
        &self,
        r: &MaskReservation,
    ) -> Result<Option<MaskReservation>, ControllerError> {
        let ns = r.namespace().unwrap_or_default();
        let api: Api<MaskReservation> = Api::namespaced(self.client.clone(), &ns);
        match self
            .metrics()
            .write("MaskReservation", api.create(&PostParams::default(), r))
            .await
        {
            Ok(created) => Ok(Some(created)),
            Err(e) if is_status(&e, 409) => Ok(None),
            Err(e) => Err(ControllerError::kube(
                format!("creating MaskReservation {ns}/{}", r.name_any()),
                e,
            )),
        }
    }
}

/// The kind's name as a `'static` metric label.
fn kind_name<K: ApiObject>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Mask" => "Mask",
        "MaskConsumer" => "MaskConsumer",
        "MaskProvider" => "MaskProvider",
        "MaskReservation" => "MaskReservation",
        "Secret" => "Secret",
        "Pod" => "Pod",
        "Deployment" => "Deployment",
        "StatefulSet" => "StatefulSet",
        "DaemonSet" => "DaemonSet",
        "ReplicaSet" => "ReplicaSet",
        "Job" => "Job",
        "MaskGateway" => "MaskGateway",
        _ => "other",
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
            NewObject::Credentials {
                copy,
                source_version,
            } => self.create_credentials(*copy, source_version).await,
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
            StatusWrite::Consumer {
                current,
                mut desired,
                resource_version,
            } => {
                desired.last_updated = now;
                let mut patch =
                    serde_json::json!({ "status": status_patch(current.as_deref(), &*desired) });
                if let Some(rv) = resource_version {
                    patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
                }
                return self.patch_status_of(target, &patch).await;
            }
            StatusWrite::Provider {
                uid,
                current,
                desired,
            } => {
                let patch =
                    serde_json::json!({ "status": status_patch(current.as_deref(), &*desired) });
                self.patch_status_of(target, &patch).await?;
                self.slot_count_writes.record(&uid);
                return Ok(());
            }
            StatusWrite::Gateway { mut patch, .. } => {
                if let Some(map) = patch.as_object_mut() {
                    map.insert("lastUpdated".into(), serde_json::json!(now));
                }
                return self
                    .patch_status_of(target, &serde_json::json!({ "status": patch }))
                    .await;
            }
        }
        .map_err(|e| ControllerError::Finalizer(e.to_string()))?;
        let patch = serde_json::json!({ "status": body });
        self.patch_status_of(target, &patch).await
    }

    /// Merge-patches the status subresource; a deleted object (404) counts as done.
    async fn patch_status_of(
        &self,
        target: &Target,
        patch: &serde_json::Value,
    ) -> Result<(), ControllerError> {
        let kind = target.kind.name();
        let pp = PatchParams::default();
        let res = by_kind!(self, target, |api| self
            .metrics()
            .write(
                kind,
                api.patch_status(&target.name, &pp, &Patch::Merge(patch))
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

    /// Creates a credentials copy; one that exists (left over, or made by
    /// another replica) is made to match.
    async fn create_credentials(
        &self,
        desired: Secret,
        source_version: Option<String>,
    ) -> Result<(), ControllerError> {
        let ns = desired.namespace().unwrap_or_default();
        let name = desired.name_any();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        match self
            .metrics()
            .write("Secret", api.create(&PostParams::default(), &desired))
            .await
        {
            Ok(created) => {
                self.note_in_step(&created, source_version);
                Ok(())
            }
            Err(e) if is_status(&e, 409) => {
                let Some(existing) = self.get_opt(&api, "Secret", &name).await? else {
                    return Ok(());
                };
                match credentials_update(&existing, &desired) {
                    Some(updated) => self.replace_credentials(&updated, source_version).await,
                    None => {
                        self.note_in_step(&existing, source_version);
                        Ok(())
                    }
                }
            }
            Err(e) => Err(ControllerError::kube(
                format!("creating Secret {ns}/{name}"),
                e,
            )),
        }
    }

    /// Replaces a credentials copy and says so on its consumer.
    async fn replace_credentials(
        &self,
        s: &Secret,
        source_version: Option<String>,
    ) -> Result<(), ControllerError> {
        let ns = s.namespace().unwrap_or_default();
        let name = s.name_any();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let replaced = self
            .metrics()
            .write("Secret", api.replace(&name, &PostParams::default(), s))
            .await
            .map_err(|e| ControllerError::kube(format!("updating Secret {ns}/{name}"), e))?;
        self.note_in_step(&replaced, source_version);
        self.metrics().action("update_credentials");
        if let Some(owner) = s.owner_references().first() {
            let regarding = ObjectReference {
                api_version: Some(owner.api_version.clone()),
                kind: Some(owner.kind.clone()),
                name: Some(owner.name.clone()),
                namespace: Some(ns.clone()),
                uid: Some(owner.uid.clone()),
                ..Default::default()
            };
            self.publish(&EventNote {
                regarding,
                warning: false,
                reason: "CredentialsUpdated".into(),
                action: "CopyCredentials".into(),
                note: format!("credentials Secret {name} updated from the provider Secret"),
            })
            .await;
        }
        Ok(())
    }

    /// Remembers `copy` (as the API server just returned it) in step with
    /// the provider Secret at `source_version`.
    fn note_in_step(&self, copy: &Secret, source_version: Option<String>) {
        if let (Some(source), Some(version)) = (source_version, copy.resource_version()) {
            let versions = crate::context::Versions {
                source,
                copy: version,
            };
            let ns = copy.namespace().unwrap_or_default();
            self.copies_in_step.record(&ns, &copy.name_any(), versions);
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
