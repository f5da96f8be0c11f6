//! The controllers' view of the cluster: one watch per kind (per watched
//! namespace), an in-memory store per kind, and a fan-out of every change to
//! the controllers that react to it.
//!
//! Several namespaces are watched by one watcher each; their events are
//! merged into a single store, so a relist of one namespace must not wipe the
//! others — hence the small adapter below instead of `reflector()`.
//!
//! Full objects and metadata-only objects (`PartialObjectMeta<K>`) go
//! through the same [`watch`]; only how the per-namespace stream starts
//! differs. Trigger channels are bounded: a full one makes the watch wait
//! (nothing is dropped) and is counted in `vpno_watch_channel_full_total`.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::SinkExt;
use futures::channel::mpsc::{Receiver, Sender, channel};
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use kube::api::{Api, PartialObjectMeta};
#[allow(deprecated)]
use kube::runtime::metadata_watcher;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch as signal;

/// One observed change of an object: its latest state, and whether it was deleted.
#[derive(Debug, Clone)]
pub(crate) struct Change<K> {
    /// The object (its last known state when deleted).
    pub obj: Arc<K>,
    /// Whether the object is gone.
    pub deleted: bool,
}

/// Room for changes in each subscriber's channel before the watch waits.
pub(crate) const CHANNEL_CAPACITY: usize = 4096;

/// Fan-out of changes of one kind to any number of subscribers, over bounded
/// channels.
pub(crate) struct Hub<K> {
    subscribers: Mutex<Vec<Sender<Change<K>>>>,
    full: prometheus_client::metrics::counter::Counter,
}

impl<K> Hub<K> {
    /// A hub counting full channels in `full`.
    pub fn new(full: prometheus_client::metrics::counter::Counter) -> Self {
        Hub {
            subscribers: Mutex::new(Vec::new()),
            full,
        }
    }
}

impl<K: Clone> Hub<K> {
    /// A new stream of every change published from now on.
    pub fn subscribe(&self) -> Receiver<Change<K>> {
        let (tx, rx) = channel(CHANNEL_CAPACITY);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// Hands `change` to every subscriber, waiting where a channel is full;
    /// subscribers that went away are forgotten.
    async fn publish(&self, change: Change<K>) {
        let mut subs =
            std::mem::take(&mut *self.subscribers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = Vec::with_capacity(subs.len());
        for mut tx in subs.drain(..) {
            match tx.try_send(change.clone()) {
                Ok(()) => kept.push(tx),
                Err(e) if e.is_full() => {
                    self.full.inc();
                    if tx.send(e.into_inner()).await.is_ok() {
                        kept.push(tx);
                    }
                }
                Err(_) => {}
            }
        }
        let mut guard = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        kept.append(&mut guard);
        *guard = kept;
    }
}

/// Where a watch reads from: every namespace, or the listed ones.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    namespaces: Vec<String>,
}

impl Scope {
    /// `namespaces` empty means all namespaces.
    pub fn new(namespaces: &[String]) -> Self {
        let mut ns: Vec<String> = namespaces
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        ns.sort();
        ns.dedup();
        Scope { namespaces: ns }
    }

    /// One `Api` per watched namespace (or one cluster-wide `Api`).
    pub fn apis<K>(&self, client: &Client) -> Vec<(Option<String>, Api<K>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        if self.namespaces.is_empty() {
            vec![(None, Api::all(client.clone()))]
        } else {
            self.namespaces
                .iter()
                .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
                .collect()
        }
    }

    /// Whether an object in `namespace` is inside the scope.
    pub fn contains(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

type Tagged<K> = BoxStream<'static, (Option<String>, Result<Event<K>, watcher::Error>)>;

/// How one namespace's (or the cluster's) watch stream of `T` starts from an `Api<K>`.
pub(crate) type StartWatch<K, T> =
    fn(Api<K>, watcher::Config) -> BoxStream<'static, Result<Event<T>, watcher::Error>>;

/// Full objects.
pub(crate) fn objects<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watch(api, cfg).boxed()
}

/// Metadata only (`PartialObjectMeta<K>`): Secrets and Pods, whose bodies the
/// controllers never need from a watch.
pub(crate) fn metadata<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> BoxStream<'static, Result<Event<PartialObjectMeta<K>>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    #[allow(deprecated)]
    metadata_watcher(api, cfg).boxed()
}

fn tagged_watches<K, T>(
    scope: &Scope,
    client: &Client,
    cfg: &watcher::Config,
    start: StartWatch<K, T>,
) -> SelectAll<Tagged<T>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    T: Resource + Send + 'static,
{
    futures::stream::select_all(scope.apis::<K>(client).into_iter().map(|(ns, api)| {
        start(api, cfg.clone())
            .default_backoff()
            // Nothing here reads managedFields; dropping them roughly halves
            // what the stores hold.
            .modify(|o: &mut T| o.meta_mut().managed_fields = None)
            .map(move |ev| (ns.clone(), ev))
            .boxed()
    }))
}

/// Called with every object the store applied (`false`) or deleted (`true`),
/// right after the store: keeps secondary indexes in step.
pub(crate) type OnChange<K> = Arc<dyn Fn(&K, bool) + Send + Sync>;

/// Applies merged per-namespace watch events to one store (when given) and
/// publishes every change. Returns when the watch streams end.
async fn pump<K>(
    kind: &'static str,
    mut events: impl Stream<Item = (Option<String>, Result<Event<K>, watcher::Error>)> + Unpin,
    mut writer: Option<Writer<K>>,
    on_change: Option<OnChange<K>>,
    hub: Arc<Hub<K>>,
    watched: usize,
    ready: signal::Sender<bool>,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut listing: HashMap<Option<String>, HashSet<ObjectRef<K>>> = HashMap::new();
    let mut listed: HashSet<Option<String>> = HashSet::new();
    let mut store_ready = false;
    while let Some((ns, ev)) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(err) => {
                tracing::warn!(kind, error = %err, "watch failed; retrying with backoff");
                continue;
            }
        };
        match ev {
            Event::Init => {
                listing.insert(ns, HashSet::new());
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                if let Some(seen) = listing.get_mut(&ns) {
                    seen.insert(ObjectRef::from_obj(&obj));
                }
                if let Some(w) = writer.as_mut() {
                    w.apply_watcher_event(&Event::Apply(obj.clone()));
                }
                if let Some(f) = &on_change {
                    f(&obj, false);
                }
                hub.publish(Change {
                    obj: Arc::new(obj),
                    deleted: false,
                })
                .await;
            }
            Event::Delete(obj) => {
                if let Some(w) = writer.as_mut() {
                    w.apply_watcher_event(&Event::Delete(obj.clone()));
                }
                if let Some(f) = &on_change {
                    f(&obj, true);
                }
                hub.publish(Change {
                    obj: Arc::new(obj),
                    deleted: true,
                })
                .await;
            }
            Event::InitDone => {
                let seen = listing.remove(&ns).unwrap_or_default();
                if let Some(w) = writer.as_mut() {
                    // Objects of this namespace that vanished while the watch was down.
                    let gone: Vec<Arc<K>> = w
                        .as_reader()
                        .state()
                        .into_iter()
                        .filter(|o| ns.is_none() || o.namespace() == ns)
                        .filter(|o| !seen.contains(&ObjectRef::from_obj(o.as_ref())))
                        .collect();
                    for obj in gone {
                        w.apply_watcher_event(&Event::Delete((*obj).clone()));
                        if let Some(f) = &on_change {
                            f(&obj, true);
                        }
                        hub.publish(Change { obj, deleted: true }).await;
                    }
                }
                listed.insert(ns);
                if !store_ready && listed.len() >= watched {
                    store_ready = true;
                    if let Some(w) = writer.as_mut() {
                        // Mark the store ready without changing its contents.
                        let all = w.as_reader().state();
                        w.apply_watcher_event(&Event::Init);
                        for o in all {
                            w.apply_watcher_event(&Event::InitApply((*o).clone()));
                        }
                        w.apply_watcher_event(&Event::InitDone);
                    }
                    let _ = ready.send(true);
                    tracing::debug!(kind, "initial list complete");
                }
            }
        }
    }
}

/// A watched kind: its store (if kept) and its change hub.
pub(crate) struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// Latest state of every object in scope.
    pub store: Store<K>,
    /// Changes, for controllers' triggers.
    pub hub: Arc<Hub<K>>,
}

/// How to watch one kind.
pub(crate) struct WatchSpec<K, T: Resource> {
    /// Kind name, for logs and metrics.
    pub kind: &'static str,
    /// How each namespace's stream starts ([`objects`] or [`metadata`]).
    pub start: StartWatch<K, T>,
    /// Whether to keep a store of `T`.
    pub store: bool,
    /// Index hook called after the store (see [`OnChange`]).
    pub on_change: Option<OnChange<T>>,
    /// Label selector of the watch (`None`: every object).
    pub labels: Option<&'static str>,
}

/// Starts watching `K` in `scope` as `T` (the objects, or their metadata).
/// The returned stream drives the watch; `ready` turns true once every
/// namespace has been listed.
pub(crate) fn watch_kind<K, T>(
    spec: WatchSpec<K, T>,
    client: &Client,
    scope: &Scope,
    metrics: &crate::Metrics,
    ready: signal::Sender<bool>,
) -> (Watched<T>, BoxStream<'static, ()>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    T: Resource + Clone + Debug + Send + Sync + 'static,
    T::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer: Writer<T> = Writer::default();
    let store = writer.as_reader();
    let full = metrics
        .watch_channel_full
        .get_or_create(&crate::metrics::KindLabels { kind: spec.kind })
        .clone();
    let hub: Arc<Hub<T>> = Arc::new(Hub::new(full));
    let mut cfg = watcher::Config::default();
    if let Some(sel) = spec.labels {
        cfg = cfg.labels(sel);
    }
    let events = tagged_watches::<K, T>(scope, client, &cfg, spec.start);
    let watched = scope.namespaces.len().max(1);
    let h = hub.clone();
    let writer = spec.store.then_some(writer);
    let (kind, on_change) = (spec.kind, spec.on_change);
    let fut = futures::stream::once(async move {
        pump(kind, events, writer, on_change, h, watched, ready).await
    })
    .boxed();
    (Watched { store, hub }, fut)
}

/// Watches Nodes (cluster-scoped, whatever the namespace scope), keeping
/// their spec and metadata: status (images, conditions, heartbeats) is
/// dropped, nothing here reads it.
pub(crate) fn watch_nodes(
    client: &Client,
    metrics: &crate::Metrics,
    ready: signal::Sender<bool>,
) -> (
    Watched<k8s_openapi::api::core::v1::Node>,
    BoxStream<'static, ()>,
) {
    use k8s_openapi::api::core::v1::Node;
    let writer: Writer<Node> = Writer::default();
    let store = writer.as_reader();
    let full = metrics
        .watch_channel_full
        .get_or_create(&crate::metrics::KindLabels { kind: "Node" })
        .clone();
    let hub: Arc<Hub<Node>> = Arc::new(Hub::new(full));
    let events = watch(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|n: &mut Node| {
            n.metadata.managed_fields = None;
            n.status = None;
        })
        .map(|ev| (None, ev))
        .boxed();
    let h = hub.clone();
    let fut = futures::stream::once(async move {
        pump("Node", events, Some(writer), None, h, 1, ready).await
    })
    .boxed();
    (Watched { store, hub }, fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn ev(
        ns: &str,
        e: Event<ConfigMap>,
    ) -> (Option<String>, Result<Event<ConfigMap>, watcher::Error>) {
        (Some(ns.to_string()), Ok(e))
    }

    #[tokio::test]
    async fn relisting_one_namespace_keeps_the_others_and_publishes_vanished_objects() {
        let writer: Writer<ConfigMap> = Writer::default();
        let store = writer.as_reader();
        let hub: Arc<Hub<ConfigMap>> = Arc::new(Hub::new(Default::default()));
        let mut changes = hub.subscribe();
        let (tx, mut ready) = signal::channel(false);
        let events = futures::stream::iter(vec![
            ev("a", Event::Init),
            ev("a", Event::InitApply(cm("a", "x"))),
            ev("a", Event::InitDone),
            ev("b", Event::Init),
            ev("b", Event::InitApply(cm("b", "y"))),
            ev("b", Event::InitDone),
            // Namespace a relists after a watch gap: x was deleted meanwhile, z created.
            ev("a", Event::Init),
            ev("a", Event::InitApply(cm("a", "z"))),
            ev("a", Event::InitDone),
            ev("b", Event::Apply(cm("b", "w"))),
            ev("b", Event::Delete(cm("b", "w"))),
        ]);
        let seen_by_hook: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let hook = seen_by_hook.clone();
        let on_change: OnChange<ConfigMap> = Arc::new(move |c: &ConfigMap, deleted| {
            hook.lock().unwrap().push((c.name_any(), deleted))
        });
        pump(
            "ConfigMap",
            events,
            Some(writer),
            Some(on_change),
            hub.clone(),
            2,
            tx,
        )
        .await;
        assert!(
            seen_by_hook
                .lock()
                .unwrap()
                .contains(&("x".to_string(), true))
        );
        assert!(
            seen_by_hook
                .lock()
                .unwrap()
                .contains(&("w".to_string(), false))
        );
        assert!(
            *ready.borrow_and_update(),
            "ready once both namespaces listed"
        );
        let mut names: Vec<String> = store.state().iter().map(|c| c.name_any()).collect();
        names.sort();
        assert_eq!(names, ["y", "z"]);
        drop(hub);
        let mut seen = Vec::new();
        while let Ok(c) = changes.try_recv() {
            seen.push((c.obj.name_any(), c.deleted));
        }
        assert!(
            seen.contains(&("x".to_string(), true)),
            "vanished object published as deleted: {seen:?}"
        );
        assert!(seen.contains(&("w".to_string(), true)));
        assert!(store.wait_until_ready().await.is_ok());
    }
}
