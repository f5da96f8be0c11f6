//! What a reconciler wants done, as data: [`Effect`]s that a pure `decide`
//! returns and one [`Executor`] carries out. The executor owns every `Api`,
//! kind name, metric and the 404/409 rules, so a decision can be unit-tested
//! against [`tests::Recording`] without a cluster (like the router's fake
//! kernel), and the rules live in one place.
//!
//! Status writes are typed ([`StatusWrite`]); whether a status changed is
//! decided in one place, [`status_changed`], which ignores `lastUpdated`.

use std::future::Future;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::events::EventType;
use vpno_api::{
    Mask, MaskConsumer, MaskConsumerStatus, MaskGatewayStatus, MaskProviderStatus,
    MaskReservationStatus, MaskStatus,
};

use crate::error::ControllerError;

/// The kinds effects address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Mask,
    MaskConsumer,
    MaskReservation,
    MaskGateway,
    Pod,
}

impl Kind {
    /// The kind's name (metric label and messages).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mask => "Mask",
            Kind::MaskConsumer => "MaskConsumer",
            Kind::MaskReservation => "MaskReservation",
            Kind::MaskGateway => "MaskGateway",
            Kind::Pod => "Pod",
        }
    }
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
    Mask(Box<Mask>),
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
}

/// One thing a reconciler wants done.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// Create an object; one that exists already (409) counts as done, and so
    /// does a namespace being deleted (the owner goes with it).
    Create(NewObject),
    /// Delete the object if it still has `uid` (when given), background
    /// propagation; gone (404) or changed (409) counts as done.
    DeleteIf { target: Target, uid: Option<String> },
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

    /// The keys with a non-empty value of the Secret `namespace/name`, and
    /// its `VPN_TYPE` (`None`: no such Secret).
    fn credential_keys(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<CredentialKeys>, ControllerError>> + Send;

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

    use super::*;

    /// An executor that records effects and answers fresh reads from a map
    /// (the tests' view of the API server).
    #[derive(Default)]
    pub(crate) struct Recording {
        pub effects: Mutex<Vec<Effect>>,
        pub consumers: Mutex<HashMap<(String, String), MaskConsumer>>,
        pub credentials: Mutex<HashMap<(String, String), CredentialKeys>>,
        pub service_cidr: Mutex<Option<String>>,
        pub agents: Mutex<HashMap<String, String>>,
    }

    impl Recording {
        /// The effects applied so far.
        pub fn taken(&self) -> Vec<Effect> {
            self.effects.lock().unwrap().clone()
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

        async fn credential_keys(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<CredentialKeys>, ControllerError> {
            Ok(self
                .credentials
                .lock()
                .unwrap()
                .get(&(namespace.to_string(), name.to_string()))
                .cloned())
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
