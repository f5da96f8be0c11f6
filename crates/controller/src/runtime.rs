//! Wiring: client, watches, triggers between kinds, the four controllers,
//! and shutdown. Which change wakes what is a table of named pure functions
//! from [`crate::triggers`]; see `run_controllers`.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::channel::mpsc::Receiver;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch as signal;
use tokio_util::sync::CancellationToken;
use vpno_api::{Mask, MaskConsumer, MaskProvider, MaskReservation};

use crate::cache::Cache;
use crate::context::{Context, Ctx};
use crate::error::ControllerError;
use crate::index::SlotIndex;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::triggers::{self as t, ProviderChanges};
use crate::view::{Change, OnChange, Scope, WatchSpec, Watched, metadata, objects, watch_kind};
use crate::{ControllerConfig, consumer, mask, provider, reservation};

/// Builds a client from `kubeconfig`, or the default (KUBECONFIG, ~/.kube/config, in-cluster).
pub(crate) async fn client_from(
    kubeconfig: Option<&std::path::Path>,
) -> Result<Client, ControllerError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ControllerError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(ControllerError::Client)
}

fn live<K>(
    rx: Receiver<Change<K>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Clone + Send + Sync + 'static,
{
    rx.filter_map(|c| async move { (!c.deleted).then(|| Ok((*c.obj).clone())) })
}

/// A trigger stream: each change of `K` mapped to the `T`s it wakes.
fn mapped<K, T, F, I>(
    rx: Receiver<Change<K>>,
    f: F,
) -> impl Stream<Item = ObjectRef<T>> + Send + 'static
where
    K: Send + Sync + 'static,
    T: Resource + Send + 'static,
    T::DynamicType: Send,
    F: Fn(&Change<K>) -> I + Send + 'static,
    I: IntoIterator<Item = ObjectRef<T>>,
    I::IntoIter: Send + 'static,
{
    rx.flat_map(move |c| futures::stream::iter(f(&c)))
}

fn error_policy<K>(obj: Arc<K>, err: &ControllerError, ctx: Arc<Ctx>) -> Action
where
    K: Resource + ResourceExt,
{
    let label = err.metric_label();
    if label == "conflict" {
        tracing::debug!(kind = ctx.kind, name = %obj.name_any(), error = %err, "conflict; retrying");
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(kind = ctx.kind, namespace = ?obj.namespace(), name = %obj.name_any(), error = %err, "reconcile failed; retrying");
        Action::requeue(Duration::from_secs(3))
    }
}

fn run_controller<K, F, Fut>(
    controller: Controller<K>,
    ctx: Arc<Ctx>,
    synced: signal::Receiver<bool>,
    shutdown: CancellationToken,
    reconcile: F,
) -> impl Future<Output = ()> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ControllerError>> + Send + 'static,
{
    let kind = ctx.kind;
    let reconcile = Arc::new(reconcile);
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            move |obj, ctx: Arc<Ctx>| {
                let reconcile = reconcile.clone();
                let mut synced = synced.clone();
                async move {
                    // The controller drains its (bounded) trigger channels from
                    // the start; reconciling waits until every store is listed.
                    let _ = synced.wait_for(|v| *v).await;
                    let name = obj.name_any();
                    let res = reconcile(obj, ctx.clone()).await;
                    tracing::trace!(kind = ctx.kind, %name, result = ?res, "reconciled");
                    ctx.metrics()
                        .reconciled(res.as_ref().err().map(|e| e.metric_label()));
                    res
                }
            },
            error_policy,
            ctx,
        )
        .for_each(move |res| async move {
            if let Err(err) = res {
                match err {
                    kube::runtime::controller::Error::ObjectNotFound(_) => {}
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => tracing::debug!(kind, error = %other, "controller event"),
                }
            }
        })
}

async fn wait_ready(mut rx: signal::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// An index hook for the watch of `K`.
fn hook<K: 'static>(
    index: &Arc<RwLock<SlotIndex>>,
    f: fn(&mut SlotIndex, &K, bool),
) -> Option<OnChange<K>> {
    let index = index.clone();
    Some(Arc::new(move |obj: &K, deleted| {
        f(
            &mut index.write().unwrap_or_else(|e| e.into_inner()),
            obj,
            deleted,
        )
    }))
}

/// Every watch the controllers use, not yet started.
struct Watches {
    providers: Watched<MaskProvider>,
    masks: Watched<Mask>,
    consumers: Watched<MaskConsumer>,
    reservations: Watched<MaskReservation>,
    secrets: Watched<PartialObjectMeta<Secret>>,
    pods: Watched<PartialObjectMeta<Pod>>,
    /// The streams driving the watches.
    pumps: Vec<futures::stream::BoxStream<'static, ()>>,
    /// One per watch: true once it has listed every namespace.
    readies: Vec<signal::Receiver<bool>>,
}

/// Sets up every watch in `scope`, keeping `index` in step with the stores.
fn watches(
    client: &Client,
    scope: &Scope,
    metrics: &Metrics,
    index: &Arc<RwLock<SlotIndex>>,
) -> Watches {
    let mut readies = Vec::new();
    let mut pumps = Vec::new();
    let mut sig = || {
        let (tx, rx) = signal::channel(false);
        readies.push(rx);
        tx
    };
    macro_rules! watch {
        ($kind:literal, $start:expr, $store:expr, $hook:expr) => {{
            let spec = WatchSpec {
                kind: $kind,
                start: $start,
                store: $store,
                on_change: $hook,
            };
            let (w, f) = watch_kind(spec, client, scope, metrics, sig());
            pumps.push(f);
            w
        }};
    }
    let providers = watch!(
        "MaskProvider",
        objects::<MaskProvider>,
        true,
        hook(index, SlotIndex::provider)
    );
    let masks = watch!("Mask", objects::<Mask>, true, None);
    let consumers = watch!(
        "MaskConsumer",
        objects::<MaskConsumer>,
        true,
        hook(index, SlotIndex::consumer)
    );
    let reservations = watch!(
        "MaskReservation",
        objects::<MaskReservation>,
        true,
        hook(index, SlotIndex::reservation)
    );
    let secrets = watch!("Secret", metadata::<Secret>, true, None);
    // Pod metadata only, without a store: verification Pods wake their
    // provider, and a deleted Pod wakes the consumer owning it.
    let pods = watch!("Pod", metadata::<Pod>, false, None);
    Watches {
        providers,
        masks,
        consumers,
        reservations,
        secrets,
        pods,
        pumps,
        readies,
    }
}

/// The four controllers, each with the triggers that wake it.
struct Controllers {
    mask: Controller<Mask>,
    consumer: Controller<MaskConsumer>,
    provider: Controller<MaskProvider>,
    reservation: Controller<MaskReservation>,
}

/// The wiring table: which change of which kind wakes which objects (the
/// functions of [`crate::triggers`]). Every trigger is subscribed before the
/// watches start, so nothing is missed.
fn wiring(w: &Watches, cache: &Cache) -> Controllers {
    let run_config = |concurrency: u16| ControllerRunConfig::default().concurrency(concurrency);
    let mask_ctl = Controller::for_stream(live(w.masks.hub.subscribe()), w.masks.store.clone())
        .with_config(run_config(32))
        .reconcile_on(mapped(w.consumers.hub.subscribe(), t::mask_of_consumer));

    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache.clone());
    let provider_changes = ProviderChanges::default();
    let consumer_ctl =
        Controller::for_stream(live(w.consumers.hub.subscribe()), w.consumers.store.clone())
            .with_config(run_config(32))
            .reconcile_on(mapped(w.reservations.hub.subscribe(), move |c| {
                t::consumers_of_reservation(&c1, c)
            }))
            .reconcile_on(mapped(w.providers.hub.subscribe(), move |c| {
                t::consumers_of_provider(&c2, &provider_changes, c)
            }))
            .reconcile_on(mapped(w.secrets.hub.subscribe(), move |c| {
                t::consumers_of_secret(&c3, c)
            }))
            .reconcile_on(mapped(w.pods.hub.subscribe(), t::consumer_of_gone_pod))
            .reconcile_on(mapped(w.masks.hub.subscribe(), t::consumer_of_gone_mask));

    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache.clone());
    let provider_ctl =
        Controller::for_stream(live(w.providers.hub.subscribe()), w.providers.store.clone())
            .with_config(run_config(8).debounce(Duration::from_millis(100)))
            .reconcile_on(mapped(
                w.reservations.hub.subscribe(),
                t::provider_of_reservation,
            ))
            .reconcile_on(mapped(w.masks.hub.subscribe(), t::provider_of_mask))
            .reconcile_on(mapped(w.consumers.hub.subscribe(), move |c| {
                t::provider_of_pinned_consumer(&c1, c)
            }))
            .reconcile_on(mapped(
                w.pods.hub.subscribe(),
                move |c: &Change<PartialObjectMeta<Pod>>| t::provider_of_verify_pod(&c2, c),
            ))
            .reconcile_on(mapped(w.secrets.hub.subscribe(), move |c| {
                t::providers_of_secret(&c3, c)
            }));

    let c1 = cache.clone();
    let reservation_ctl = Controller::for_stream(
        live(w.reservations.hub.subscribe()),
        w.reservations.store.clone(),
    )
    .with_config(run_config(16))
    .reconcile_on(mapped(w.consumers.hub.subscribe(), move |c| {
        t::reservations_of_consumer(&c1, c)
    }));

    Controllers {
        mask: mask_ctl,
        consumer: consumer_ctl,
        provider: provider_ctl,
        reservation: reservation_ctl,
    }
}

/// Runs the four controllers until `shutdown` is cancelled.
pub(crate) async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let scope = Scope::new(&config.namespaces);
    let index: Arc<RwLock<SlotIndex>> = Arc::default();
    let mut w = watches(&client, &scope, &config.metrics, &index);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let cache = Cache {
        providers: w.providers.store.clone(),
        masks: w.masks.store.clone(),
        consumers: w.consumers.store.clone(),
        reservations: w.reservations.store.clone(),
        secrets: w.secrets.store.clone(),
        index,
    };
    let shared = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        scope: scope.clone(),
        cache: cache.clone(),
        recorder,
        slot_count_writes: Default::default(),
        copies_in_step: Default::default(),
    });
    let ctx_for = |kind: &'static str, m: fn(&Metrics) -> &ControllerMetrics| {
        Arc::new(Ctx {
            shared: shared.clone(),
            kind,
            m,
        })
    };
    let ctls = wiring(&w, &cache);

    // Start watching and the controllers; reconciles wait for the initial lists.
    let (synced_tx, synced_rx) = signal::channel(false);
    let mut pump_tasks = tokio::task::JoinSet::new();
    for p in std::mem::take(&mut w.pumps) {
        pump_tasks.spawn(p.for_each(|_| async {}));
    }
    let controllers = futures::future::join4(
        run_controller(
            ctls.mask,
            ctx_for("Mask", |m| &m.mask),
            synced_rx.clone(),
            shutdown.clone(),
            mask::reconcile,
        ),
        run_controller(
            ctls.consumer,
            ctx_for("MaskConsumer", |m| &m.consumer),
            synced_rx.clone(),
            shutdown.clone(),
            consumer::reconcile,
        ),
        run_controller(
            ctls.provider,
            ctx_for("MaskProvider", |m| &m.provider),
            synced_rx.clone(),
            shutdown.clone(),
            provider::reconcile,
        ),
        run_controller(
            ctls.reservation,
            ctx_for("MaskReservation", |m| &m.reservation),
            synced_rx,
            shutdown.clone(),
            reservation::reconcile,
        ),
    );
    let all_ready =
        futures::future::join_all(std::mem::take(&mut w.readies).into_iter().map(wait_ready));
    let announce = async {
        all_ready.await;
        tracing::info!(namespaces = ?config.namespaces, "caches synced; controllers running");
        config
            .synced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = synced_tx.send(true);
        futures::future::pending::<()>().await
    };
    tokio::select! {
        _ = controllers => {}
        _ = announce => {}
        _ = shutdown.cancelled() => {}
    }
    pump_tasks.abort_all();
    config
        .synced
        .store(false, std::sync::atomic::Ordering::SeqCst);
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(ControllerError::Stopped("all"))
    }
}
