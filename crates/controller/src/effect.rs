//! What a reconciler wants done, as data: [`Effect`]s that a pure `decide`
//! returns and one [`Executor`] carries out. The executor owns every `Api`,
//! kind name, metric and the 404/409 rules, so a decision can be unit-tested
//! against [`tests::Recording`] without a cluster (like the router's fake
//! kernel), and the rules live in one place.
//!
//! Status writes are typed ([`StatusWrite`]); whether a status changed is
//! decided in one place, [`status_changed`], which ignores `lastUpdated`.

use std::future::Future;

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::events::EventType;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vpno_api::{
    Mask, MaskConsumer, MaskConsumerStatus, MaskGatewayStatus, MaskProviderStatus, MaskReservation,
    MaskReservationStatus, MaskStatus,
};

use crate::error::ControllerError;

/// The kinds effects address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Mask,
    MaskConsumer,
    MaskProvider,
    MaskReservation,
    Secret,
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    MaskGateway,
}

impl Kind {
    /// The kind's name (metric label and messages).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mask => "Mask",
            Kind::MaskConsumer => "MaskConsumer",
            Kind::MaskProvider => "MaskProvider",
            Kind::MaskReservation => "MaskReservation",
            Kind::Secret => "Secret",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::MaskGateway => "MaskGateway",
        }
    }
}

/// How a delete reaches an object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// The object goes at once; the garbage collector removes dependents later.
    Background,
    /// The object stays (with a `deletionTimestamp`) until the garbage
    /// collector has deleted its blocking dependents (a Deployment's Pods).
    Foreground,
}

/// Namespace, name and kind of the object an effect addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// An object to create.
#[derive(Debug, Clone)]
pub(crate) enum NewObject {
    MaskConsumer(Box<MaskConsumer>),
    /// A provider's verification Mask, or a MaskGateway's replica Mask.
    Mask(Box<Mask>),
    /// A credentials copy; one that exists already is made to match (data,
    /// owner, label), with an Event on its owning consumer. With the provider
    /// Secret's resourceVersion, the copy is remembered as in step with it.
    Credentials {
        copy: Box<Secret>,
        source_version: Option<String>,
    },
    Pod(Box<Pod>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    /// A Secret holding [`RANDOM_KEY_LEN`] random bytes under `key`; the
    /// executor draws them, so deciding stays pure.
    RandomKey(Box<RandomKey>),
}

/// Length of a [`NewObject::RandomKey`] in bytes.
pub(crate) const RANDOM_KEY_LEN: usize = 32;

/// A Secret of random bytes to create once (an existing one is kept).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RandomKey {
    pub namespace: String,
    pub name: String,
    /// The data key the bytes are stored under.
    pub key: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub owner: OwnerReference,
}

/// A typed status to write (a merge patch of the status subresource;
/// `lastUpdated` is stamped by the executor).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StatusWrite {
    Mask(MaskStatus),
    Reservation(MaskReservationStatus),
    /// A MaskGateway's status: `desired` as decided, `patch` the merge patch
    /// from the current status to it (removed fields set to null).
    Gateway {
        desired: Box<MaskGatewayStatus>,
        patch: serde_json::Value,
    },
    /// A consumer's status, as a patch from `current` (so that a provider
    /// that went away is cleared); with `resource_version`, written only on
    /// that version of the consumer.
    Consumer {
        current: Option<Box<MaskConsumerStatus>>,
        desired: Box<MaskConsumerStatus>,
        resource_version: Option<String>,
    },
    /// A provider's status, as a patch from `current`; `desired` carries its
    /// own `lastUpdated` (when the phase was entered). The write is noted
    /// for the provider `uid` (see `slot_count_write_wait`).
    Provider {
        uid: String,
        current: Option<Box<MaskProviderStatus>>,
        desired: Box<MaskProviderStatus>,
    },
}

/// One thing a reconciler wants done.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// Create an object; one that exists already (409) counts as done, and so
    /// does a namespace being deleted (the owner goes with it).
    Create(NewObject),
    /// Delete the object if it still has `uid` (when given); gone (404) or
    /// changed (409) counts as done.
    DeleteIf {
        target: Target,
        uid: Option<String>,
        propagation: Propagation,
    },
    /// Replace a credentials copy (read moments ago) with this version.
    UpdateCredentials {
        copy: Box<Secret>,
        source_version: Option<String>,
    },
    /// Write the status; a deleted object (404) counts as done.
    PatchStatus { target: Target, status: StatusWrite },
    /// Replace the finalizers if they still are `current`.
    SetFinalizers {
        target: Target,
        current: Vec<String>,
        new: Vec<String>,
    },
    /// Set `spec.providers` of a consumer (copied from its Mask) or of a
    /// Mask (copied from its MaskGateway).
    SetProviders {
        target: Target,
        providers: Option<Vec<String>>,
    },
    /// Remember that a credentials copy is in step with its provider Secret
    /// at these versions (so the next look need not read either).
    NoteCopyInStep {
        namespace: String,
        name: String,
        versions: crate::context::Versions,
    },
    /// Show a provider's used and free slots (`None`: it is gone).
    ShowSlots {
        provider: String,
        counts: Option<(u32, u32)>,
    },
    /// Publish an Event about an object; failures are logged, never fatal.
    Event(EventNote),
    /// Count an action in the controller's metrics.
    Count(&'static str),
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventNote {
    pub regarding: ObjectReference,
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

impl EventNote {
    /// The Event type.
    pub fn event_type(&self) -> EventType {
        if self.warning {
            EventType::Warning
        } else {
            EventType::Normal
        }
    }
}

/// Carries out effects, and reads the API server where a decision must not
/// rest on the cache alone (the act-then-look-again steps).
pub(crate) trait Executor: Send + Sync {
    /// Applies one effect.
    fn apply(&self, effect: Effect) -> impl Future<Output = Result<(), ControllerError>> + Send;

    /// A fresh GET of a consumer (`None`: it does not exist).
    fn fresh_consumer(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<MaskConsumer>, ControllerError>> + Send;

    /// A fresh GET of any namespaced object (`None`: it does not exist).
    fn fresh<K: ApiObject>(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, ControllerError>> + Send;

    /// The metadata of every `K` in `namespace` (a fresh LIST).
    fn list_metadata<K: ApiObject>(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<ObjectMeta>, ControllerError>> + Send;

    /// Every `K` in `namespace` (a fresh LIST).
    fn list<K: ApiObject>(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<K>, ControllerError>> + Send;

    /// Creates a verification Pod; `Ok(Err(why))` when the API server
    /// rejects it (a user error: the provider's overrides). One that exists
    /// counts as created.
    fn create_verify_pod(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> impl Future<Output = Result<Result<(), String>, ControllerError>> + Send;

    /// Takes a slot: creates the reservation; `None` when it exists (409),
    /// i.e. someone else holds the slot.
    fn try_reserve(
        &self,
        reservation: &MaskReservation,
    ) -> impl Future<Output = Result<Option<MaskReservation>, ControllerError>> + Send;

    /// The cluster's service range as the cluster tells it (kube-apiserver
    /// flags or kubeadm's configuration), `None` when it does not.
    fn service_cidr(&self) -> impl Future<Output = Option<String>> + Send;

    /// The bodies of 200 answers to `GET` of each URL (agents' status
    /// endpoints on their Pod IPs), `None` where none came in time.
    fn fetch_agents(&self, urls: Vec<String>) -> impl Future<Output = Vec<Option<String>>> + Send;

    /// Applies effects in order, stopping at the first error.
    fn apply_all(
        &self,
        effects: Vec<Effect>,
    ) -> impl Future<Output = Result<(), ControllerError>> + Send {
        async move {
            for e in effects {
                self.apply(e).await?;
            }
            Ok(())
        }
    }
}

/// What a credentials Secret holds, without the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CredentialKeys {
    /// Keys whose value is not empty.
    pub keys: std::collections::BTreeSet<String>,
    /// The value of `VPN_TYPE` (not a secret: `wireguard` or `openvpn`).
    pub vpn_type: Option<String>,
}

impl CredentialKeys {
    /// The key names of `secret` (values other than `VPN_TYPE` are dropped here).
    pub fn of(secret: &Secret) -> Self {
        let data = secret.data.as_ref();
        let keys = data
            .iter()
            .flat_map(|d| d.iter())
            .filter(|(_, v)| !v.0.iter().all(u8::is_ascii_whitespace))
            .map(|(k, _)| k.clone())
            .collect();
        let vpn_type = data
            .and_then(|d| d.get("VPN_TYPE"))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_ascii_lowercase());
        CredentialKeys { keys, vpn_type }
    }
}

/// A namespaced API object the executor reads.
pub(crate) trait ApiObject:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> ApiObject for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The parts of a status that say something; `lastUpdated` is when it was said.
pub(crate) trait Stamped: Clone + PartialEq + serde::Serialize {
    /// The status's `lastUpdated`.
    fn stamp_mut(&mut self) -> &mut Option<String>;

    /// The same status without its timestamp.
    fn unstamped(&self) -> Self {
        let mut s = self.clone();
        *s.stamp_mut() = None;
        s
    }
}

macro_rules! stamped {
    ($($t:ty),*) => {$(
        impl Stamped for $t {
            fn stamp_mut(&mut self) -> &mut Option<String> {
                &mut self.last_updated
            }
        }
    )*};
}
stamped!(
    MaskStatus,
    MaskReservationStatus,
    MaskConsumerStatus,
    MaskProviderStatus,
    MaskGatewayStatus
);

/// The JSON merge patch that turns status `current` into `desired`: fields
/// that changed or appeared are set, fields that went away are set to null.
pub(crate) fn status_patch<S: serde::Serialize>(
    current: Option<&S>,
    desired: &S,
) -> serde_json::Value {
    let to_map = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let old = current
        .and_then(|c| serde_json::to_value(c).ok())
        .map(to_map)
        .unwrap_or_default();
    let new = serde_json::to_value(desired)
        .map(to_map)
        .unwrap_or_default();
    let mut patch = serde_json::Map::new();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(patch)
}

/// Whether writing `desired` over `current` changes anything but the timestamp.
pub(crate) fn status_changed<S: Stamped>(current: Option<&S>, desired: &S) -> bool {
    current.is_none_or(|c| c.unstamped() != desired.unstamped())
}

/// The target of `obj` of kind `kind`.
pub(crate) fn target_of<K: kube::Resource>(kind: Kind, obj: &K) -> Target {
    Target {
        kind,
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
    }
}

/// `obj` carries `ours` instead of the original vpn-operator's finalizer
/// (counted as `adopt_legacy` when it had the original's).
pub(crate) fn adopt_finalizers<K: kube::Resource>(kind: Kind, obj: &K, ours: &str) -> Vec<Effect> {
    let current = obj.meta().finalizers.clone().unwrap_or_default();
    let Some(new) = crate::plan::finalizers::adopted(&current, Some(ours)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if current.iter().any(|f| f == crate::plan::LEGACY_FINALIZER) {
        out.push(Effect::Count("adopt_legacy"));
    }
    out.push(Effect::SetFinalizers {
        target: target_of(kind, obj),
        current,
        new,
    });
    out
}

/// `obj` lets go of `ours` and the original vpn-operator's finalizer (the
/// release work is done).
pub(crate) fn release_finalizers<K: kube::Resource>(
    kind: Kind,
    obj: &K,
    ours: &str,
) -> Option<Effect> {
    let current = obj.meta().finalizers.clone().unwrap_or_default();
    let new = crate::plan::finalizers::released(&current, Some(ours))?;
    Some(Effect::SetFinalizers {
        target: target_of(kind, obj),
        current,
        new,
    })
}

/// The reference an Event about `obj` points at.
pub(crate) fn regarding<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// A Mask's target.
pub(crate) fn mask_target(m: &Mask) -> Target {
    target_of(Kind::Mask, m)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use kube::{Resource, ResourceExt};

    use super::*;

    /// A Pod with this annotation is rejected by [`Recording`] as the API
    /// server rejects invalid Pods.
    pub(crate) const REJECT_ANNOTATION: &str = "test.vpno/reject";

    /// An executor that records effects and answers fresh reads from maps
    /// (the tests' view of the API server). A reservation is taken unless its
    /// name is in `held`.
    #[derive(Default)]
    pub(crate) struct Recording {
        pub effects: Mutex<Vec<Effect>>,
        pub consumers: Mutex<HashMap<(String, String), MaskConsumer>>,
        /// Any other object, by (kind, namespace, name), as JSON.
        pub objects: Mutex<HashMap<(String, String, String), serde_json::Value>>,
        /// Reservation names someone else holds.
        pub held: Mutex<Vec<String>>,
        pub service_cidr: Mutex<Option<String>>,
        pub agents: Mutex<HashMap<String, String>>,
    }

    impl Recording {
        /// The effects applied so far.
        pub fn taken(&self) -> Vec<Effect> {
            self.effects.lock().unwrap().clone()
        }

        /// Puts `obj` where fresh reads and lists find it.
        pub fn put<K: ApiObject>(&self, obj: &K) {
            let key = (
                K::kind(&()).to_string(),
                obj.meta().namespace.clone().unwrap_or_default(),
                obj.meta().name.clone().unwrap_or_default(),
            );
            let value = serde_json::to_value(obj).unwrap();
            self.objects.lock().unwrap().insert(key, value);
        }

        fn all<K: ApiObject>(&self, namespace: &str) -> Vec<K> {
            let kind = K::kind(&()).to_string();
            self.objects
                .lock()
                .unwrap()
                .iter()
                .filter(|((k, ns, _), _)| *k == kind && ns == namespace)
                .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
                .collect()
        }
    }

    impl Executor for Recording {
        async fn apply(&self, effect: Effect) -> Result<(), ControllerError> {
            self.effects.lock().unwrap().push(effect);
            Ok(())
        }

        async fn fresh_consumer(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<MaskConsumer>, ControllerError> {
            Ok(self
                .consumers
                .lock()
                .unwrap()
                .get(&(namespace.to_string(), name.to_string()))
                .cloned())
        }

        async fn fresh<K: ApiObject>(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<K>, ControllerError> {
            Ok(self
                .all::<K>(namespace)
                .into_iter()
                .find(|o| o.meta().name.as_deref() == Some(name)))
        }

        async fn list_metadata<K: ApiObject>(
            &self,
            namespace: &str,
        ) -> Result<Vec<ObjectMeta>, ControllerError> {
            Ok(self
                .all::<K>(namespace)
                .into_iter()
                .map(|o| o.meta().clone())
                .collect())
        }

        async fn list<K: ApiObject>(&self, namespace: &str) -> Result<Vec<K>, ControllerError> {
            Ok(self.all::<K>(namespace))
        }

        async fn create_verify_pod(
            &self,
            pod: &k8s_openapi::api::core::v1::Pod,
        ) -> Result<Result<(), String>, ControllerError> {
            if pod.annotations().contains_key(REJECT_ANNOTATION) {
                return Ok(Err("the API server rejected the verification pod".into()));
            }
            self.put(pod);
            Ok(Ok(()))
        }

        async fn try_reserve(
            &self,
            reservation: &MaskReservation,
        ) -> Result<Option<MaskReservation>, ControllerError> {
            let name = reservation.meta().name.clone().unwrap_or_default();
            if self.held.lock().unwrap().contains(&name) {
                return Ok(None);
            }
            let mut made = reservation.clone();
            made.meta_mut().uid = Some(format!("uid-{name}"));
            Ok(Some(made))
        }

        async fn service_cidr(&self) -> Option<String> {
            self.service_cidr.lock().unwrap().clone()
        }

        async fn fetch_agents(&self, urls: Vec<String>) -> Vec<Option<String>> {
            let answers = self.agents.lock().unwrap();
            urls.iter().map(|u| answers.get(u).cloned()).collect()
        }
    }

    #[test]
    fn credential_keys_keep_names_and_the_vpn_type_only() {
        let secret = Secret {
            data: Some(
                [
                    ("WIREGUARD_PRIVATE_KEY_1", "k"),
                    ("EMPTY", " \n"),
                    ("VPN_TYPE", " WireGuard\n"),
                ]
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ),
            ..Default::default()
        };
        let keys = CredentialKeys::of(&secret);
        assert_eq!(
            keys.keys.into_iter().collect::<Vec<_>>(),
            ["VPN_TYPE", "WIREGUARD_PRIVATE_KEY_1"]
        );
        assert_eq!(keys.vpn_type.as_deref(), Some("wireguard"));
    }

    #[test]
    fn the_status_patch_sets_what_changed_and_clears_what_went() {
        let current = MaskConsumerStatus {
            phase: Some(vpno_api::MaskPhase::Active),
            message: Some("assigned".into()),
            last_updated: Some("then".into()),
            provider: Some(Default::default()),
        };
        let desired = MaskConsumerStatus {
            phase: Some(vpno_api::MaskPhase::Waiting),
            message: Some("assigned".into()),
            last_updated: Some("now".into()),
            provider: None,
        };
        assert_eq!(
            status_patch(Some(&current), &desired),
            serde_json::json!({"phase": "Waiting", "lastUpdated": "now", "provider": null})
        );
        assert_eq!(
            status_patch(None, &desired),
            serde_json::json!({"phase": "Waiting", "message": "assigned", "lastUpdated": "now"})
        );
    }

    #[test]
    fn only_what_a_status_says_counts_as_a_change() {
        let a = MaskStatus {
            phase: Some(vpno_api::MaskPhase::Active),
            message: Some("ok".into()),
            last_updated: Some("2026-01-01T00:00:00Z".into()),
        };
        let later = MaskStatus {
            last_updated: Some("2026-01-02T00:00:00Z".into()),
            ..a.clone()
        };
        assert!(!status_changed(Some(&a), &later));
        assert!(status_changed(None, &later));
        let other = MaskStatus {
            message: Some("different".into()),
            ..a.clone()
        };
        assert!(status_changed(Some(&a), &other));
    }
}
