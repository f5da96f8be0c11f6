//! Which MaskGateways a change of another kind wakes (the gateway rows of
//! the wiring table in [`crate::runtime`]).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::names::GATEWAY_LABEL;
use vpno_api::{Mask, MaskConsumer, MaskGateway};

use super::observe::node_info;
use crate::cache::Cache;
use crate::view::Change;

/// The MaskGateway named by an object's [`GATEWAY_LABEL`].
fn labelled<K: Resource>(obj: &K) -> Option<ObjectRef<MaskGateway>> {
    let name = obj.meta().labels.as_ref()?.get(GATEWAY_LABEL)?;
    Some(ObjectRef::new(name).within(obj.meta().namespace.as_deref()?))
}

/// A gateway's Mask (or its consumer's progress) changes its MaskGateway.
pub(crate) fn gateway_of_mask(c: &Change<Mask>) -> Option<ObjectRef<MaskGateway>> {
    labelled(c.obj.as_ref())
}

/// A consumer of a gateway's Mask: slot assigned, lost or released.
pub(crate) fn gateway_of_consumer(
    cache: &Cache,
    c: &Change<MaskConsumer>,
) -> Option<ObjectRef<MaskGateway>> {
    let ns = c.obj.namespace()?;
    let mask = cache
        .masks
        .get(&ObjectRef::new(&c.obj.name_any()).within(&ns))?;
    labelled(mask.as_ref())
}

/// A gateway or router Pod changes (started, ready, deleted).
pub(crate) fn gateway_of_pod(c: &Change<Pod>) -> Option<ObjectRef<MaskGateway>> {
    labelled(c.obj.as_ref())
}

/// The routers' key Secret (labelled), or a gateway consumer's credentials
/// copy (a slot's key added to the provider Secret reaches the copy).
pub(crate) fn gateway_of_secret(
    cache: &Cache,
    c: &Change<PartialObjectMeta<Secret>>,
) -> Option<ObjectRef<MaskGateway>> {
    if let Some(gw) = labelled(c.obj.as_ref()) {
        return Some(gw);
    }
    let ns = c.obj.namespace()?;
    let owner = c
        .obj
        .owner_references()
        .iter()
        .find(|o| o.kind == "MaskConsumer")?;
    let mask = cache.masks.get(&ObjectRef::new(&owner.name).within(&ns))?;
    labelled(mask.as_ref())
}

/// Node pod ranges last seen, so that only a Node that came, went or
/// changed its pod ranges wakes the MaskGateways (not every heartbeat).
#[derive(Default)]
pub(crate) struct NodeRanges(Mutex<HashMap<String, Vec<String>>>);

/// Every MaskGateway, when the set of nodes or their pod ranges changed.
pub(crate) fn gateways_of_node(
    cache: &Cache,
    seen: &NodeRanges,
    c: &Change<Node>,
) -> Vec<ObjectRef<MaskGateway>> {
    let info = node_info(c.obj.as_ref());
    let mut seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
    let changed = if c.deleted {
        seen.remove(&info.name).is_some()
    } else {
        seen.insert(info.name, info.pod_cidrs.clone()).as_ref() != Some(&info.pod_cidrs)
    };
    if !changed {
        return Vec::new();
    }
    cache
        .gateways
        .state()
        .iter()
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::cache::tests::cache_of;
    use crate::gateway::replicas::mask_for;
    use crate::gateway::tests::gateway;

    fn change<K>(obj: K, deleted: bool) -> Change<K> {
        Change {
            obj: Arc::new(obj),
            deleted,
        }
    }

    fn node(name: &str, cidr: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_gateways_mask_consumer_and_pods_wake_it() {
        let gw = gateway("egress", 1);
        let mask = mask_for(&gw, 0).unwrap();
        let want = Some(ObjectRef::new("egress").within("apps"));
        assert_eq!(gateway_of_mask(&change(mask.clone(), false)), want);
        let mut c = MaskConsumer::new("egress-0", Default::default());
        c.metadata.namespace = Some("apps".into());
        let cache = cache_of(&[], std::slice::from_ref(&mask), &[], &[]);
        assert_eq!(gateway_of_consumer(&cache, &change(c.clone(), false)), want);
        let plain = Mask::new("egress-0", Default::default());
        let cache = cache_of(
            &[],
            &[Mask {
                metadata: ObjectMeta {
                    namespace: Some("apps".into()),
                    ..plain.metadata
                },
                ..plain
            }],
            &[],
            &[],
        );
        assert_eq!(
            gateway_of_consumer(&cache, &change(c, false)),
            None,
            "an ordinary Mask's consumer"
        );
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("apps".into());
        pod.metadata.labels = mask.metadata.labels.clone();
        assert_eq!(gateway_of_pod(&change(pod, true)), want);
    }

    #[test]
    fn only_nodes_that_come_go_or_change_ranges_wake_every_gateway() {
        let mut cache = cache_of(&[], &[], &[], &[]);
        let mut w: Writer<MaskGateway> = Writer::default();
        w.apply_watcher_event(&Event::Apply(gateway("a", 1)));
        w.apply_watcher_event(&Event::Apply(gateway("b", 1)));
        cache.gateways = w.as_reader();
        let seen = NodeRanges::default();
        let n = node("n1", "10.244.0.0/24");
        assert_eq!(
            gateways_of_node(&cache, &seen, &change(n.clone(), false)).len(),
            2
        );
        assert!(
            gateways_of_node(&cache, &seen, &change(n.clone(), false)).is_empty(),
            "a heartbeat"
        );
        let moved = node("n1", "10.244.9.0/24");
        assert_eq!(
            gateways_of_node(&cache, &seen, &change(moved.clone(), false)).len(),
            2
        );
        assert_eq!(
            gateways_of_node(&cache, &seen, &change(moved.clone(), true)).len(),
            2
        );
        assert!(gateways_of_node(&cache, &seen, &change(moved, true)).is_empty());
    }
}
