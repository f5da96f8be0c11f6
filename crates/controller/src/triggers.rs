//! Which objects a change of another kind wakes: one named pure function per
//! edge of the wiring table in [`crate::runtime`]. Each reads only the cache
//! and touches only the objects it returns.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::{Mask, MaskConsumer, MaskProvider, MaskReservation, ProviderPhase};

use crate::cache::Cache;
use crate::plan::assign::{SlotRequest, admits};
use crate::plan::{PIN_ANNOTATION, VERIFY_LABEL};
use crate::view::Change;

/// References to the owners of kind `kind` of `obj`, in `obj`'s namespace.
fn owners<T, K>(obj: &T, kind: &str) -> Vec<ObjectRef<K>>
where
    T: Resource,
    K: Resource<DynamicType = ()>,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    obj.owner_references()
        .iter()
        .filter(|o| o.kind == kind)
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect()
}

fn refs<K: Resource<DynamicType = ()>>(
    objs: impl IntoIterator<Item = std::sync::Arc<K>>,
) -> Vec<ObjectRef<K>> {
    objs.into_iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Whether an object is gone or going.
fn gone<K: Resource>(c: &Change<K>) -> bool {
    c.deleted || c.obj.meta().deletion_timestamp.is_some()
}

// ------------------------------------------------------------ Mask controller

/// A consumer's Mask shows the consumer's progress.
pub(crate) fn mask_of_consumer(c: &Change<MaskConsumer>) -> Vec<ObjectRef<Mask>> {
    owners(c.obj.as_ref(), "Mask")
}

// -------------------------------------------------------- consumer controller

/// The unassigned consumers `provider` could serve (by namespace, tags or
/// pin; whatever its phase or free slots).
pub(crate) fn unassigned_candidates(
    cache: &Cache,
    provider: &MaskProvider,
) -> Vec<ObjectRef<MaskConsumer>> {
    let Some(slots) = cache.slots_of(provider) else {
        return Vec::new();
    };
    cache
        .unassigned_consumers()
        .into_iter()
        .filter(|c| {
            let ns = c.namespace().unwrap_or_default();
            let uid = c.uid().unwrap_or_default();
            let pinned = c.annotations().get(PIN_ANNOTATION).cloned();
            let req = SlotRequest {
                namespace: &ns,
                tags: c.spec.providers.as_deref(),
                pinned: pinned.as_deref(),
                seed: &uid,
            };
            admits(&slots, &req).is_ok()
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// A reservation's holder reacts to it; a freed slot wakes the consumers
/// that could take it.
pub(crate) fn consumers_of_reservation(
    cache: &Cache,
    c: &Change<MaskReservation>,
) -> Vec<ObjectRef<MaskConsumer>> {
    let r = &c.obj;
    let mut out = vec![ObjectRef::new(&r.spec.name).within(&r.spec.namespace)];
    if c.deleted
        && let Some(p) = provider_owning(cache, r)
    {
        out.extend(unassigned_candidates(cache, &p));
    }
    out
}

fn provider_owning(cache: &Cache, r: &MaskReservation) -> Option<std::sync::Arc<MaskProvider>> {
    let ns = r.namespace()?;
    let owner = r
        .owner_references()
        .iter()
        .find(|o| o.kind == "MaskProvider")?;
    cache
        .provider(&ns, &owner.name)
        .filter(|p| p.uid().as_deref() == Some(owner.uid.as_str()))
}

/// The parts of a provider that decide who may be assigned to it: its spec,
/// whether it is being deleted, and its phase — with `Ready` and `Active`
/// alike (both assignable), so that slot usage alone wakes nobody.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProviderFingerprint {
    phase: ProviderPhase,
    spec: String,
    terminating: bool,
}

impl ProviderFingerprint {
    /// The fingerprint of `p`.
    pub fn of(p: &MaskProvider) -> Self {
        let phase = if p.phase().is_assignable() {
            ProviderPhase::Ready
        } else {
            p.phase()
        };
        ProviderFingerprint {
            phase,
            spec: serde_json::to_string(&p.spec).unwrap_or_default(),
            terminating: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// The fingerprint each provider was last seen with, so that only changes
/// that can alter assignments wake consumers.
#[derive(Default)]
pub(crate) struct ProviderChanges(Mutex<HashMap<String, ProviderFingerprint>>);

impl ProviderChanges {
    /// Whether `c` changes who may be assigned to its provider (deletions do).
    pub fn relevant(&self, c: &Change<MaskProvider>) -> bool {
        let uid = c.obj.uid().unwrap_or_default();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.deleted {
            seen.remove(&uid);
            return true;
        }
        let fp = ProviderFingerprint::of(&c.obj);
        if seen.get(&uid) == Some(&fp) {
            return false;
        }
        seen.insert(uid, fp);
        true
    }
}

/// A provider change that matters wakes its consumers (they may have lost
/// it or no longer match it) and the unassigned ones it could now serve.
pub(crate) fn consumers_of_provider(
    cache: &Cache,
    changes: &ProviderChanges,
    c: &Change<MaskProvider>,
) -> Vec<ObjectRef<MaskConsumer>> {
    if !changes.relevant(c) {
        return Vec::new();
    }
    let uid = c.obj.uid().unwrap_or_default();
    let mut out = refs(cache.consumers_assigned_to(&uid));
    if !c.deleted {
        out.extend(unassigned_candidates(cache, &c.obj));
    }
    out
}

/// A credentials copy wakes its consumer; a provider Secret wakes the
/// consumers holding slots of the providers using it (their copies follow).
pub(crate) fn consumers_of_secret(
    cache: &Cache,
    c: &Change<PartialObjectMeta<Secret>>,
) -> Vec<ObjectRef<MaskConsumer>> {
    let ns = c.obj.namespace().unwrap_or_default();
    let mut out: Vec<ObjectRef<MaskConsumer>> = owners(c.obj.as_ref(), "MaskConsumer");
    for p in cache.providers_using_secret(&ns, &c.obj.name_any()) {
        out.extend(refs(
            cache.consumers_assigned_to(&p.uid().unwrap_or_default()),
        ));
    }
    out
}

/// A Pod a consumer owns going away wakes the consumer, whose release may
/// be waiting for it.
pub(crate) fn consumer_of_gone_pod(
    c: &Change<PartialObjectMeta<Pod>>,
) -> Vec<ObjectRef<MaskConsumer>> {
    if !gone(c) {
        return Vec::new();
    }
    owners(c.obj.as_ref(), "MaskConsumer")
}

/// A deleted Mask: its consumer releases at once instead of waiting for the
/// garbage collector.
pub(crate) fn consumer_of_gone_mask(c: &Change<Mask>) -> Option<ObjectRef<MaskConsumer>> {
    gone(c)
        .then(|| ObjectRef::new(&c.obj.name_any()).within(&c.obj.namespace().unwrap_or_default()))
}

// -------------------------------------------------------- provider controller

/// A reservation's provider counts its slots.
pub(crate) fn provider_of_reservation(c: &Change<MaskReservation>) -> Vec<ObjectRef<MaskProvider>> {
    owners(c.obj.as_ref(), "MaskProvider")
}

/// A verification Mask's provider follows its attempt.
pub(crate) fn provider_of_mask(c: &Change<Mask>) -> Vec<ObjectRef<MaskProvider>> {
    owners(c.obj.as_ref(), "MaskProvider")
}

/// A verification consumer's provider follows its attempt.
pub(crate) fn provider_of_pinned_consumer(
    cache: &Cache,
    c: &Change<MaskConsumer>,
) -> Option<ObjectRef<MaskProvider>> {
    let uid = c.obj.annotations().get(PIN_ANNOTATION)?;
    cache
        .provider_by_uid(uid)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
}

/// A verification Pod's provider follows its progress.
pub(crate) fn provider_of_verify_pod(
    cache: &Cache,
    c: &Change<PartialObjectMeta<Pod>>,
) -> Option<ObjectRef<MaskProvider>> {
    let uid = c.obj.labels().get(VERIFY_LABEL)?;
    cache
        .provider_by_uid(uid)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
}

/// A provider Secret appearing, changing or going changes its providers' phase.
pub(crate) fn providers_of_secret(
    cache: &Cache,
    c: &Change<PartialObjectMeta<Secret>>,
) -> Vec<ObjectRef<MaskProvider>> {
    let ns = c.obj.namespace().unwrap_or_default();
    refs(cache.providers_using_secret(&ns, &c.obj.name_any()))
}

// ----------------------------------------------------- reservation controller

/// A consumer's reservations (by its uid, or by its name) follow it.
pub(crate) fn reservations_of_consumer(
    cache: &Cache,
    c: &Change<MaskConsumer>,
) -> Vec<ObjectRef<MaskReservation>> {
    refs(cache.reservations_for(&c.obj))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::tests::cache_of;
    use crate::index::tests::{consumer, provider, reservation};

    fn change<K>(obj: K, deleted: bool) -> Change<K> {
        Change {
            obj: Arc::new(obj),
            deleted,
        }
    }

    fn names<K: Resource<DynamicType = ()>>(mut v: Vec<ObjectRef<K>>) -> Vec<String> {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter().map(|r| r.name).collect()
    }

    fn phase(mut p: MaskProvider, phase: ProviderPhase) -> MaskProvider {
        p.status = Some(vpno_api::MaskProviderStatus {
            phase: Some(phase),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_freed_slot_wakes_its_holder_and_the_waiting_consumers_the_provider_admits() {
        let mut p = provider("vpn", "p", "pu", "creds");
        p.spec.tags = Some(vec!["eu".into()]);
        let mut eu = consumer("apps", "eu", "c-eu", None);
        eu.spec.providers = Some(vec!["eu".into()]);
        let mut us = consumer("apps", "us", "c-us", None);
        us.spec.providers = Some(vec!["us".into()]);
        let any = consumer("apps", "any", "c-any", None);
        let holder = consumer("apps", "holder", "c-h", Some("pu"));
        let r = reservation("vpn", "p-0", "pu", ("apps", "holder", "c-h"));
        let cache = cache_of(
            std::slice::from_ref(&p),
            &[],
            &[eu, us, any, holder],
            std::slice::from_ref(&r),
        );
        assert_eq!(
            names(consumers_of_reservation(&cache, &change(r.clone(), false))),
            ["holder"],
            "a new or changed reservation wakes only its holder"
        );
        assert_eq!(
            names(consumers_of_reservation(&cache, &change(r, true))),
            ["any", "eu", "holder"]
        );
    }

    #[test]
    fn provider_usage_alone_wakes_nobody_but_assignability_and_spec_do() {
        let p = phase(provider("vpn", "p", "pu", "creds"), ProviderPhase::Ready);
        let holder = consumer("apps", "holder", "c-h", Some("pu"));
        let waiting = consumer("apps", "waiting", "c-w", None);
        let cache = cache_of(std::slice::from_ref(&p), &[], &[holder, waiting], &[]);
        let changes = ProviderChanges::default();
        assert_eq!(
            names(consumers_of_provider(
                &cache,
                &changes,
                &change(p.clone(), false)
            )),
            ["holder", "waiting"],
            "first sight"
        );
        let active = phase(p.clone(), ProviderPhase::Active);
        assert!(consumers_of_provider(&cache, &changes, &change(active.clone(), false)).is_empty());
        let failed = phase(p.clone(), ProviderPhase::ErrVerifyFailed);
        assert_eq!(
            names(consumers_of_provider(
                &cache,
                &changes,
                &change(failed, false)
            )),
            ["holder", "waiting"]
        );
        let mut retagged = active;
        retagged.spec.tags = Some(vec!["x".into()]);
        assert!(
            !consumers_of_provider(&cache, &changes, &change(retagged.clone(), false)).is_empty()
        );
        assert_eq!(
            names(consumers_of_provider(
                &cache,
                &changes,
                &change(retagged, true)
            )),
            ["holder"],
            "a deleted provider wakes only its consumers"
        );
    }

    #[test]
    fn secrets_wake_their_copies_owners_and_the_consumers_of_providers_using_them() {
        let p = provider("vpn", "p", "pu", "creds");
        let holder = consumer("apps", "holder", "c-h", Some("pu"));
        let cache = cache_of(&[p], &[], &[holder], &[]);
        let mut source: PartialObjectMeta<Secret> = Default::default();
        source.metadata.name = Some("creds".into());
        source.metadata.namespace = Some("vpn".into());
        assert_eq!(
            names(consumers_of_secret(&cache, &change(source.clone(), false))),
            ["holder"]
        );
        assert_eq!(
            names(providers_of_secret(&cache, &change(source, false))),
            ["p"]
        );
        let mut other: PartialObjectMeta<Secret> = Default::default();
        other.metadata.name = Some("unrelated".into());
        other.metadata.namespace = Some("vpn".into());
        assert!(consumers_of_secret(&cache, &change(other.clone(), false)).is_empty());
        assert!(providers_of_secret(&cache, &change(other, false)).is_empty());
    }

    #[test]
    fn pods_wake_their_consumer_only_when_going_and_their_provider_by_label() {
        let p = provider("vpn", "p", "pu", "creds");
        let cache = cache_of(&[p], &[], &[], &[]);
        let mut pod: PartialObjectMeta<Pod> = Default::default();
        pod.metadata.name = Some("vpno-verify-p".into());
        pod.metadata.namespace = Some("vpn".into());
        pod.metadata.labels = Some([(VERIFY_LABEL.to_string(), "pu".to_string())].into());
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "MaskConsumer".into(),
                name: "vpno-verify-p".into(),
                uid: "c".into(),
                ..Default::default()
            },
        ]);
        assert!(consumer_of_gone_pod(&change(pod.clone(), false)).is_empty());
        assert_eq!(
            names(consumer_of_gone_pod(&change(pod.clone(), true))),
            ["vpno-verify-p"]
        );
        assert_eq!(
            provider_of_verify_pod(&cache, &change(pod, false)).map(|r| r.name),
            Some("p".to_string())
        );
    }

    #[test]
    fn a_consumer_wakes_its_mask_reservations_and_pinned_provider() {
        let p = provider("vpn", "p", "pu", "creds");
        let mut c = consumer("vpn", "vpno-verify-p", "c1", None);
        c.metadata.annotations = Some([(PIN_ANNOTATION.to_string(), "pu".to_string())].into());
        c.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "Mask".into(),
                name: "vpno-verify-p".into(),
                uid: "m".into(),
                ..Default::default()
            },
        ]);
        let by_uid = reservation("vpn", "p-0", "pu", ("vpn", "other-name", "c1"));
        let by_name = reservation("vpn", "p-1", "pu", ("vpn", "vpno-verify-p", "old-uid"));
        let unrelated = reservation("vpn", "p-2", "pu", ("vpn", "x", "cx"));
        let cache = cache_of(&[p], &[], &[c.clone()], &[by_uid, by_name, unrelated]);
        let ch = change(c, false);
        assert_eq!(names(mask_of_consumer(&ch)), ["vpno-verify-p"]);
        assert_eq!(names(reservations_of_consumer(&cache, &ch)), ["p-0", "p-1"]);
        assert_eq!(
            provider_of_pinned_consumer(&cache, &ch).map(|r| r.name),
            Some("p".to_string())
        );
    }

    #[test]
    fn a_deleted_mask_wakes_its_consumer() {
        let mut m = Mask::new("m", Default::default());
        m.metadata.namespace = Some("apps".into());
        assert_eq!(consumer_of_gone_mask(&change(m.clone(), false)), None);
        assert_eq!(
            consumer_of_gone_mask(&change(m, true)).map(|r| r.name),
            Some("m".to_string())
        );
    }
}
