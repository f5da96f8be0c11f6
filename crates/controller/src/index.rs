//! Secondary indexes over the stores, so that each event's work is
//! proportional to the objects it touches, not to the size of the store.
//!
//! The watch pumps keep [`SlotIndex`] in step with the stores: every applied
//! or deleted object passes through [`SlotIndex::provider`],
//! [`SlotIndex::consumer`] or [`SlotIndex::reservation`] right after the
//! store saw it. Lookups return object references; the objects themselves
//! stay in the stores.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::names::slot_of_reservation;
use vpno_api::{MaskConsumer, MaskProvider, MaskReservation};

/// Key → values, with the reverse mapping so an object's old keys can be
/// dropped when it changes.
#[derive(Debug)]
struct MultiIndex<K, V> {
    forward: HashMap<K, HashSet<V>>,
    keys_of: HashMap<V, Vec<K>>,
}

impl<K, V> Default for MultiIndex<K, V> {
    fn default() -> Self {
        MultiIndex {
            forward: HashMap::new(),
            keys_of: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Hash + Eq + Clone> MultiIndex<K, V> {
    /// Files `value` under exactly `keys` (none: forgets it).
    fn set(&mut self, value: &V, keys: Vec<K>) {
        self.remove(value);
        if keys.is_empty() {
            return;
        }
        for k in &keys {
            self.forward
                .entry(k.clone())
                .or_default()
                .insert(value.clone());
        }
        self.keys_of.insert(value.clone(), keys);
    }

    fn remove(&mut self, value: &V) {
        for k in self.keys_of.remove(value).unwrap_or_default() {
            if let Some(set) = self.forward.get_mut(&k) {
                set.remove(value);
                if set.is_empty() {
                    self.forward.remove(&k);
                }
            }
        }
    }

    fn get(&self, key: &K) -> Vec<V> {
        self.forward
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Namespace and name of an object.
pub(crate) type NsName = (String, String);

/// The lookups the reconcilers and watch triggers need, kept per object.
#[derive(Debug, Default)]
pub(crate) struct SlotIndex {
    reservations_by_provider: MultiIndex<String, ObjectRef<MaskReservation>>,
    /// Provider uid -> slots its reservations hold (names parsed against the owner's name).
    taken: HashMap<String, BTreeSet<u32>>,
    slot_of: HashMap<ObjectRef<MaskReservation>, (String, u32)>,
    reservations_by_holder_uid: MultiIndex<String, ObjectRef<MaskReservation>>,
    reservations_by_holder: MultiIndex<NsName, ObjectRef<MaskReservation>>,
    consumers_by_provider: MultiIndex<String, ObjectRef<MaskConsumer>>,
    unassigned: MultiIndex<(), ObjectRef<MaskConsumer>>,
    providers_by_uid: MultiIndex<String, ObjectRef<MaskProvider>>,
    providers_by_secret: MultiIndex<NsName, ObjectRef<MaskProvider>>,
}

impl SlotIndex {
    /// Files a provider after the store applied (`deleted`: removed) it.
    pub fn provider(&mut self, p: &MaskProvider, deleted: bool) {
        let r = ObjectRef::from_obj(p);
        if deleted {
            self.providers_by_uid.remove(&r);
            self.providers_by_secret.remove(&r);
            return;
        }
        self.providers_by_uid.set(&r, p.uid().into_iter().collect());
        let secret = (p.namespace().unwrap_or_default(), p.spec.secret.clone());
        self.providers_by_secret.set(&r, vec![secret]);
    }

    /// Files a consumer after the store applied (`deleted`: removed) it.
    pub fn consumer(&mut self, c: &MaskConsumer, deleted: bool) {
        let r = ObjectRef::from_obj(c);
        if deleted {
            self.consumers_by_provider.remove(&r);
            self.unassigned.remove(&r);
            return;
        }
        let assigned: Vec<String> = c.assignment().map(|a| a.uid.clone()).into_iter().collect();
        let waiting = assigned.is_empty() && c.meta().deletion_timestamp.is_none();
        self.consumers_by_provider.set(&r, assigned);
        self.unassigned
            .set(&r, if waiting { vec![()] } else { Vec::new() });
    }

    /// Files a reservation after the store applied (`deleted`: removed) it.
    pub fn reservation(&mut self, res: &MaskReservation, deleted: bool) {
        let r = ObjectRef::from_obj(res);
        if let Some((uid, slot)) = self.slot_of.remove(&r)
            && let Some(set) = self.taken.get_mut(&uid)
        {
            set.remove(&slot);
            if set.is_empty() {
                self.taken.remove(&uid);
            }
        }
        if deleted {
            self.reservations_by_provider.remove(&r);
            self.reservations_by_holder_uid.remove(&r);
            self.reservations_by_holder.remove(&r);
            return;
        }
        let owner_refs: Vec<_> = res
            .owner_references()
            .iter()
            .filter(|o| o.kind == "MaskProvider")
            .collect();
        if let Some(o) = owner_refs.first()
            && let Some(slot) = slot_of_reservation(&o.name, &res.name_any())
        {
            self.taken.entry(o.uid.clone()).or_default().insert(slot);
            self.slot_of.insert(r.clone(), (o.uid.clone(), slot));
        }
        let owners = owner_refs.iter().map(|o| o.uid.clone()).collect();
        self.reservations_by_provider.set(&r, owners);
        self.reservations_by_holder_uid
            .set(&r, vec![res.spec.uid.clone()]);
        self.reservations_by_holder.set(
            &r,
            vec![(res.spec.namespace.clone(), res.spec.name.clone())],
        );
    }

    /// Reservations owned by the provider `uid`.
    pub fn reservations_of_provider(&self, uid: &str) -> Vec<ObjectRef<MaskReservation>> {
        self.reservations_by_provider.get(&uid.to_string())
    }

    /// Slots held by reservations of the provider `uid`.
    pub fn taken_slots(&self, uid: &str) -> BTreeSet<u32> {
        self.taken.get(uid).cloned().unwrap_or_default()
    }

    /// Reservations made for the consumer `uid`, or naming the consumer `holder`.
    pub fn reservations_for(
        &self,
        uid: &str,
        holder: Option<&NsName>,
    ) -> Vec<ObjectRef<MaskReservation>> {
        let mut out = self.reservations_by_holder_uid.get(&uid.to_string());
        if let Some(h) = holder {
            for r in self.reservations_by_holder.get(h) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// Consumers whose status records a slot of the provider `uid`.
    pub fn consumers_assigned_to(&self, uid: &str) -> Vec<ObjectRef<MaskConsumer>> {
        self.consumers_by_provider.get(&uid.to_string())
    }

    /// Live consumers without an assignment.
    pub fn unassigned_consumers(&self) -> Vec<ObjectRef<MaskConsumer>> {
        self.unassigned.get(&())
    }

    /// The provider with `uid`.
    pub fn provider_by_uid(&self, uid: &str) -> Option<ObjectRef<MaskProvider>> {
        self.providers_by_uid
            .get(&uid.to_string())
            .into_iter()
            .next()
    }

    /// Providers in `namespace` whose credentials are the Secret `secret`.
    pub fn providers_using_secret(
        &self,
        namespace: &str,
        secret: &str,
    ) -> Vec<ObjectRef<MaskProvider>> {
        self.providers_by_secret
            .get(&(namespace.to_string(), secret.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vpno_api::{AssignedProvider, MaskConsumerSpec, MaskProviderSpec, MaskReservationSpec};

    pub(crate) fn provider(ns: &str, name: &str, uid: &str, secret: &str) -> MaskProvider {
        let mut p = MaskProvider::new(
            name,
            MaskProviderSpec {
                secret: secret.into(),
                max_slots: 2,
                ..Default::default()
            },
        );
        p.metadata.namespace = Some(ns.into());
        p.metadata.uid = Some(uid.into());
        p
    }

    pub(crate) fn consumer(
        ns: &str,
        name: &str,
        uid: &str,
        provider: Option<&str>,
    ) -> MaskConsumer {
        let mut c = MaskConsumer::new(name, MaskConsumerSpec::default());
        c.metadata.namespace = Some(ns.into());
        c.metadata.uid = Some(uid.into());
        if let Some(p) = provider {
            c.status = Some(vpno_api::MaskConsumerStatus {
                provider: Some(AssignedProvider {
                    uid: p.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        c
    }

    pub(crate) fn reservation(
        ns: &str,
        name: &str,
        provider_uid: &str,
        holder: (&str, &str, &str),
    ) -> MaskReservation {
        let mut r = MaskReservation::new(
            name,
            MaskReservationSpec {
                namespace: holder.0.into(),
                name: holder.1.into(),
                uid: holder.2.into(),
            },
        );
        r.metadata.namespace = Some(ns.into());
        r.metadata.uid = Some(format!("r-{name}"));
        r.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "vpn.beebs.dev/v1".into(),
                kind: "MaskProvider".into(),
                name: "p".into(),
                uid: provider_uid.into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        r
    }

    fn names<K: kube::Resource>(refs: Vec<ObjectRef<K>>) -> Vec<String>
    where
        K::DynamicType: Default,
    {
        let mut v: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn reservations_are_found_by_provider_and_by_holder_and_forgotten_on_delete() {
        let mut ix = SlotIndex::default();
        let r0 = reservation("vpn", "p-0", "pu", ("apps", "a", "ca"));
        let r1 = reservation("vpn", "p-1", "pu", ("apps", "b", "cb"));
        ix.reservation(&r0, false);
        ix.reservation(&r1, false);
        assert_eq!(names(ix.reservations_of_provider("pu")), ["p-0", "p-1"]);
        assert_eq!(ix.taken_slots("pu"), [0, 1].into());
        assert_eq!(names(ix.reservations_for("ca", None)), ["p-0"]);
        let holder = ("apps".to_string(), "b".to_string());
        assert_eq!(names(ix.reservations_for("other", Some(&holder))), ["p-1"]);
        ix.reservation(&r0, true);
        assert_eq!(names(ix.reservations_of_provider("pu")), ["p-1"]);
        assert_eq!(ix.taken_slots("pu"), [1].into());
        ix.reservation(&r1, true);
        assert!(ix.taken_slots("pu").is_empty());
        assert!(ix.reservations_for("ca", None).is_empty());
    }

    #[test]
    fn consumers_move_between_unassigned_and_assigned() {
        let mut ix = SlotIndex::default();
        let waiting = consumer("apps", "a", "ca", None);
        ix.consumer(&waiting, false);
        assert_eq!(names(ix.unassigned_consumers()), ["a"]);
        assert!(ix.consumers_assigned_to("pu").is_empty());
        let assigned = consumer("apps", "a", "ca", Some("pu"));
        ix.consumer(&assigned, false);
        assert!(ix.unassigned_consumers().is_empty());
        assert_eq!(names(ix.consumers_assigned_to("pu")), ["a"]);
        let mut deleting = waiting.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        ix.consumer(&deleting, false);
        assert!(
            ix.unassigned_consumers().is_empty(),
            "being deleted: not waiting"
        );
        assert!(ix.consumers_assigned_to("pu").is_empty());
        ix.consumer(&assigned, true);
        assert!(ix.consumers_assigned_to("pu").is_empty());
    }

    #[test]
    fn providers_are_found_by_uid_and_secret() {
        let mut ix = SlotIndex::default();
        let p = provider("vpn", "p", "pu", "creds");
        ix.provider(&p, false);
        assert_eq!(ix.provider_by_uid("pu").map(|r| r.name), Some("p".into()));
        assert_eq!(names(ix.providers_using_secret("vpn", "creds")), ["p"]);
        assert!(ix.providers_using_secret("other", "creds").is_empty());
        let mut moved = p.clone();
        moved.spec.secret = "new".into();
        ix.provider(&moved, false);
        assert!(ix.providers_using_secret("vpn", "creds").is_empty());
        assert_eq!(names(ix.providers_using_secret("vpn", "new")), ["p"]);
        ix.provider(&moved, true);
        assert_eq!(ix.provider_by_uid("pu"), None);
    }
}
