//! State shared by the reconcilers: client, stores, recorder, metrics.

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use vpno_api::MaskProvider;

use crate::ControllerConfig;
use crate::cache::Cache;

use crate::error::{ControllerError, is_status};
use crate::metrics::{ControllerMetrics, Metrics};
use crate::plan::assign::ProviderSlots;

use crate::view::Scope;

/// Everything a reconciler may use.
pub(crate) struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub scope: Scope,
    /// Stores and indexes of every watched kind.
    pub cache: Cache,
    pub recorder: Recorder,
    /// When each provider's status was last written (spaces out writes that
    /// only update `activeSlots`; memory for pacing, not for decisions).
    pub slot_count_writes: WriteTimes,
    /// Credentials copies last seen equal to their provider Secret (saves
    /// two reads per consumer reconcile; memory for cost, not for decisions).
    pub copies_in_step: CopiesInStep,
}

/// The versions at which a credentials copy was last seen equal to its
/// provider Secret, per copy `(namespace, name)`: while the cache shows
/// both at those versions, nothing changed and neither needs reading.
#[derive(Default)]
pub(crate) struct CopiesInStep(
    std::sync::Mutex<std::collections::HashMap<(String, String), Versions>>,
);

/// The resourceVersions of a provider Secret and its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versions {
    pub source: String,
    pub copy: String,
}

impl CopiesInStep {
    /// Whether the copy was seen in step at exactly `versions`.
    pub fn holds(&self, namespace: &str, name: &str, versions: &Versions) -> bool {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(namespace.to_string(), name.to_string())) == Some(versions)
    }

    /// Records the copy as in step at `versions`.
    pub fn record(&self, namespace: &str, name: &str, versions: Versions) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert((namespace.to_string(), name.to_string()), versions);
    }

    /// Forgets a copy (it is being deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&(namespace.to_string(), name.to_string()));
    }
}

/// The time of the last write per key.
#[derive(Default)]
pub(crate) struct WriteTimes(
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
);

impl WriteTimes {
    /// Time since the last write of `key`.
    pub fn since(&self, key: &str) -> Option<std::time::Duration> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).map(|t| t.elapsed())
    }

    /// Records a write of `key` now.
    pub fn record(&self, key: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), std::time::Instant::now());
    }
}

impl std::ops::Deref for Context {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        &self.cache
    }
}

/// The reconcile context plus the metrics of one controller.
pub(crate) struct Ctx {
    pub shared: Arc<Context>,
    pub kind: &'static str,
    pub m: fn(&Metrics) -> &ControllerMetrics,
}

impl std::ops::Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

impl Ctx {
    /// This controller's metric families.
    pub fn metrics(&self) -> &ControllerMetrics {
        (self.m)(&self.shared.config.metrics)
    }

    /// GETs an object, `None` when it does not exist.
    pub async fn get_opt<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
    ) -> Result<Option<K>, ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        self.metrics()
            .read(kind, api.get_opt(name))
            .await
            .map_err(|e| ControllerError::kube(format!("reading {kind} {name}"), e))
    }

    /// Deletes an object (optionally only if it still has `uid`); a missing
    /// object or a changed uid count as done.
    pub async fn delete_if<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        self.delete_with(api, kind, name, uid, DeleteParams::background())
            .await
    }

    /// Like [`Ctx::delete_if`], with foreground propagation: the object stays
    /// (with a `deletionTimestamp`) until the garbage collector has deleted
    /// its blocking dependents, e.g. a Deployment's ReplicaSets and Pods.
    pub async fn delete_foreground_if<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        self.delete_with(api, kind, name, uid, DeleteParams::foreground())
            .await
    }

    async fn delete_with<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        uid: Option<&str>,
        mut dp: DeleteParams,
    ) -> Result<(), ControllerError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        if let Some(uid) = uid {
            dp.preconditions = Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        match self.metrics().write(kind, api.delete(name, &dp)).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(ControllerError::kube(format!("deleting {kind} {name}"), e)),
        }
    }
}

/// A JSON patch replacing the finalizer list only if it is still `current`
/// (other fields, e.g. a status written moments ago, do not cause conflicts).
pub(crate) fn finalizer_patch(
    current: &[String],
    new: &[String],
) -> Result<json_patch::Patch, ControllerError> {
    let ops = if current.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": new},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": new},
        ])
    };
    serde_json::from_value(ops).map_err(|e| ControllerError::Finalizer(e.to_string()))
}

/// The planner's view of `p` with `taken` slots (`None` before it has a uid).
pub(crate) fn provider_view(
    p: &MaskProvider,
    taken: std::collections::BTreeSet<u32>,
) -> Option<ProviderSlots> {
    Some(ProviderSlots {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        uid: p.uid()?,
        phase: p.phase(),
        terminating: p.meta().deletion_timestamp.is_some(),
        max_slots: p.spec.max_slots,
        taken,
        tags: p.spec.tags.clone().unwrap_or_default(),
        namespaces: p.spec.namespaces.clone(),
    })
}

/// Namespace of a namespaced object (always set by the API server).
pub(crate) fn ns_of<K: Resource>(obj: &K, kind: &'static str) -> Result<String, ControllerError> {
    obj.meta()
        .namespace
        .clone()
        .ok_or(ControllerError::MissingField {
            kind,
            field: "metadata.namespace",
        })
}

/// UID of an object (always set by the API server).
pub(crate) fn uid_of<K: Resource>(obj: &K, kind: &'static str) -> Result<String, ControllerError> {
    obj.meta().uid.clone().ok_or(ControllerError::MissingField {
        kind,
        field: "metadata.uid",
    })
}

/// An owner reference making `owner` the controller of a dependent.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    owner.controller_owner_ref(&())
}
