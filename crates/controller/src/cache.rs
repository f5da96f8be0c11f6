//! What the controllers know without asking the API server: one store per
//! watched kind and the [`SlotIndex`] over them, with the lookups the
//! reconcilers and triggers share. Every lookup touches only the objects it
//! returns (no scan of a whole store per event).

use std::sync::{Arc, RwLock, RwLockReadGuard};

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use vpno_api::names::slot_of_reservation;
use vpno_api::{Mask, MaskConsumer, MaskGateway, MaskProvider, MaskReservation};

use crate::context::provider_view;
use crate::index::SlotIndex;
use crate::plan::assign::ProviderSlots;

/// Stores of every watched kind and the index over them.
#[derive(Clone)]
pub(crate) struct Cache {
    pub providers: Store<MaskProvider>,
    pub masks: Store<Mask>,
    pub consumers: Store<MaskConsumer>,
    pub reservations: Store<MaskReservation>,
    /// Secret metadata (existence and resourceVersion of provider Secrets).
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub index: Arc<RwLock<SlotIndex>>,
    pub gateways: Store<MaskGateway>,
    /// Pods labelled `vpn.beebs.dev/mask-gateway` (gateways and routers).
    pub gateway_pods: Store<Pod>,
    /// Nodes, without their status.
    pub nodes: Store<Node>,
    /// Whether Nodes have been listed (a namespace-scoped controller may not).
    pub nodes_listed: tokio::sync::watch::Receiver<bool>,
}

impl Cache {
    /// The index, for reading.
    pub fn index(&self) -> RwLockReadGuard<'_, SlotIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reservations held against `provider` (owned by it, named after it).
    pub fn reservations_of(&self, provider: &MaskProvider) -> Vec<(u32, Arc<MaskReservation>)> {
        let Some(uid) = provider.uid() else {
            return Vec::new();
        };
        let ns = provider.namespace();
        let name = provider.name_any();
        let refs = self.index().reservations_of_provider(&uid);
        refs.iter()
            .filter_map(|r| self.reservations.get(r))
            .filter(|r| r.namespace() == ns)
            .filter_map(|r| slot_of_reservation(&name, &r.name_any()).map(|s| (s, r)))
            .collect()
    }

    /// Reservations made for the consumer `uid` (by uid, or by its namespace and name).
    pub fn reservations_for(&self, consumer: &MaskConsumer) -> Vec<Arc<MaskReservation>> {
        let uid = consumer.uid().unwrap_or_default();
        let holder = (
            consumer.namespace().unwrap_or_default(),
            consumer.name_any(),
        );
        let refs = self.index().reservations_for(&uid, Some(&holder));
        refs.iter()
            .filter_map(|r| self.reservations.get(r))
            .collect()
    }

    /// The planner's view of every provider in scope.
    pub fn provider_slots(&self) -> Vec<(Arc<MaskProvider>, ProviderSlots)> {
        self.providers
            .state()
            .into_iter()
            .filter_map(|p| {
                let slots = self.slots_of(&p)?;
                Some((p, slots))
            })
            .collect()
    }

    /// The planner's view of one provider (`None` before it has a uid).
    pub fn slots_of(&self, p: &MaskProvider) -> Option<ProviderSlots> {
        let taken = self.index().taken_slots(&p.uid()?);
        provider_view(p, taken)
    }

    /// A provider from the store by namespace and name.
    pub fn provider(&self, namespace: &str, name: &str) -> Option<Arc<MaskProvider>> {
        self.providers.get(&ObjectRef::new(name).within(namespace))
    }

    /// The provider with `uid`.
    pub fn provider_by_uid(&self, uid: &str) -> Option<Arc<MaskProvider>> {
        let r = self.index().provider_by_uid(uid)?;
        self.providers.get(&r)
    }

    /// Providers in `namespace` whose credentials are the Secret `secret`.
    pub fn providers_using_secret(&self, namespace: &str, secret: &str) -> Vec<Arc<MaskProvider>> {
        let refs = self.index().providers_using_secret(namespace, secret);
        refs.iter().filter_map(|r| self.providers.get(r)).collect()
    }

    /// Consumers whose status records a slot of the provider `uid`.
    pub fn consumers_assigned_to(&self, uid: &str) -> Vec<Arc<MaskConsumer>> {
        let refs = self.index().consumers_assigned_to(uid);
        refs.iter().filter_map(|r| self.consumers.get(r)).collect()
    }

    /// Live consumers without an assignment.
    pub fn unassigned_consumers(&self) -> Vec<Arc<MaskConsumer>> {
        let refs = self.index().unassigned_consumers();
        refs.iter().filter_map(|r| self.consumers.get(r)).collect()
    }

    /// The cached metadata of the Secret `namespace/name`.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kube::Resource;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    /// A cache filled with `providers`, `consumers` and `reservations` (as
    /// the watches would fill it), for unit tests of triggers and reconcilers.
    pub(crate) fn cache_of(
        providers: &[MaskProvider],
        masks: &[Mask],
        consumers: &[MaskConsumer],
        reservations: &[MaskReservation],
    ) -> Cache {
        fn fill<K>(items: &[K], mut each: impl FnMut(&K)) -> Store<K>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let mut w: Writer<K> = Writer::default();
            for i in items {
                w.apply_watcher_event(&Event::Apply(i.clone()));
                each(i);
            }
            w.as_reader()
        }
        let mut index = SlotIndex::default();
        let providers = fill(providers, |p| index.provider(p, false));
        let consumers = fill(consumers, |c| index.consumer(c, false));
        let reservations = fill(reservations, |r| index.reservation(r, false));
        Cache {
            providers,
            masks: fill(masks, |_| {}),
            consumers,
            reservations,
            secrets: fill(&[], |_| {}),
            index: Arc::new(RwLock::new(index)),
            gateways: fill(&[], |_| {}),
            gateway_pods: fill(&[], |_| {}),
            nodes: fill(&[], |_| {}),
            nodes_listed: tokio::sync::watch::channel(true).1,
        }
    }
}
