//! Wiring: client, watches, triggers between kinds, the four controllers,
//! and shutdown.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
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

use crate::context::{Context, Ctx};
use crate::error::ControllerError;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::plan::assign::{SlotRequest, admits};
use crate::plan::{PIN_ANNOTATION, VERIFY_LABEL};
use crate::view::{Change, Scope, watch_kind, watch_meta};
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

/// Resolves on SIGTERM or ctrl-c.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn live<K>(
    rx: UnboundedReceiver<Change<K>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Clone + Send + Sync + 'static,
{
    rx.filter_map(|c| async move { (!c.deleted).then(|| Ok((*c.obj).clone())) })
}

fn mapped<K, T, F, I>(
    rx: UnboundedReceiver<Change<K>>,
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
                async move {
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

/// The unassigned consumers that `provider` could serve (by namespace, tags or pin; any phase).
fn unassigned_candidates(ctx: &Context, provider: &MaskProvider) -> Vec<ObjectRef<MaskConsumer>> {
    let Some(slots) = ctx.slots_of(provider) else {
        return Vec::new();
    };
    ctx.consumers
        .state()
        .into_iter()
        .filter(|c| c.assignment().is_none() && c.meta().deletion_timestamp.is_none())
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
            // Phase changes matter too: only what the provider admits counts here.
            admits(&slots, &req).is_ok()
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn consumers_assigned_to(ctx: &Context, provider_uid: &str) -> Vec<ObjectRef<MaskConsumer>> {
    ctx.consumers
        .state()
        .into_iter()
        .filter(|c| c.assignment().is_some_and(|a| a.uid == provider_uid))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn provider_owning(ctx: &Context, r: &MaskReservation) -> Option<Arc<MaskProvider>> {
    let ns = r.namespace()?;
    let owner = r
        .owner_references()
        .iter()
        .find(|o| o.kind == "MaskProvider")?;
    ctx.provider(&ns, &owner.name)
        .filter(|p| p.uid().as_deref() == Some(owner.uid.as_str()))
}

fn provider_by_uid(ctx: &Context, uid: &str) -> Option<Arc<MaskProvider>> {
    ctx.providers
        .state()
        .into_iter()
        .find(|p| p.uid().as_deref() == Some(uid))
}

fn providers_using_secret(ctx: &Context, namespace: &str, secret: &str) -> Vec<Arc<MaskProvider>> {
    ctx.providers
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace) && p.spec.secret == secret)
        .collect()
}

/// The parts of a provider that decide who may be assigned to it.
#[derive(PartialEq, Eq)]
struct ProviderFingerprint {
    phase: vpno_api::ProviderPhase,
    spec: String,
    terminating: bool,
}

impl ProviderFingerprint {
    fn of(p: &MaskProvider) -> Self {
        ProviderFingerprint {
            phase: p.phase(),
            spec: serde_json::to_string(&p.spec).unwrap_or_default(),
            terminating: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

async fn wait_ready(mut rx: signal::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs the four controllers until `shutdown` is cancelled.
pub(crate) async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let scope = Scope::new(&config.namespaces);
    let mut readies = Vec::new();
    let mut pumps = Vec::new();
    let mut sig = || {
        let (tx, rx) = signal::channel(false);
        readies.push(rx);
        tx
    };
    let (providers, f) = watch_kind::<MaskProvider>(
        "MaskProvider",
        &client,
        &scope,
        watcher::Config::default(),
        sig(),
    );
    pumps.push(f);
    let (masks, f) = watch_kind::<Mask>("Mask", &client, &scope, watcher::Config::default(), sig());
    pumps.push(f);
    let (consumers, f) = watch_kind::<MaskConsumer>(
        "MaskConsumer",
        &client,
        &scope,
        watcher::Config::default(),
        sig(),
    );
    pumps.push(f);
    let (reservations, f) = watch_kind::<MaskReservation>(
        "MaskReservation",
        &client,
        &scope,
        watcher::Config::default(),
        sig(),
    );
    pumps.push(f);
    let (secrets, f) =
        watch_meta::<Secret>("Secret", &client, &scope, watcher::Config::default(), sig());
    pumps.push(f);
    // Pod metadata only: verification Pods wake their provider, and a deleted
    // Pod wakes the consumer owning it, whose release may be waiting for it.
    let (pods, f) = watch_meta::<Pod>("Pod", &client, &scope, watcher::Config::default(), sig());
    pumps.push(f);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let shared = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        scope: scope.clone(),
        providers: providers.store.clone(),
        masks: masks.store.clone(),
        consumers: consumers.store.clone(),
        reservations: reservations.store.clone(),
        recorder,
    });
    let ctx_for = |kind: &'static str, m: fn(&Metrics) -> &ControllerMetrics| {
        Arc::new(Ctx {
            shared: shared.clone(),
            kind,
            m,
        })
    };

    // Subscribe every trigger before the watches start, so nothing is missed.
    // Mask controller: Masks, and their consumers.
    let s = shared.clone();
    let mask_ctl = Controller::for_stream(live(masks.hub.subscribe()), masks.store.clone())
        .with_config(ControllerRunConfig::default().concurrency(32))
        .reconcile_on(mapped(
            consumers.hub.subscribe(),
            move |c: &Change<MaskConsumer>| {
                let _ = &s;
                c.obj
                    .owner_references()
                    .iter()
                    .filter(|o| o.kind == "Mask")
                    .map(|o| ObjectRef::new(&o.name).within(&c.obj.namespace().unwrap_or_default()))
                    .collect::<Vec<_>>()
            },
        ));

    // MaskConsumer controller.
    let s1 = shared.clone();
    let s2 = shared.clone();
    let s3 = shared.clone();
    let consumer_ctl =
        Controller::for_stream(live(consumers.hub.subscribe()), consumers.store.clone())
            .with_config(ControllerRunConfig::default().concurrency(32))
            .reconcile_on(mapped(
                reservations.hub.subscribe(),
                move |c: &Change<MaskReservation>| {
                    let r = &c.obj;
                    let mut out = vec![ObjectRef::new(&r.spec.name).within(&r.spec.namespace)];
                    if c.deleted {
                        // A freed slot: wake the consumers that could take it.
                        if let Some(p) = provider_owning(&s1, r) {
                            out.extend(unassigned_candidates(&s1, &p));
                        }
                    }
                    out
                },
            ))
            .reconcile_on(mapped(providers.hub.subscribe(), {
                // Only changes that can alter assignments matter (not activeSlots or lastUpdated).
                let seen: std::sync::Mutex<std::collections::HashMap<String, ProviderFingerprint>> =
                    Default::default();
                move |c: &Change<MaskProvider>| {
                    let uid = c.obj.uid().unwrap_or_default();
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if c.deleted {
                        seen.remove(&uid);
                        return consumers_assigned_to(&s2, &uid);
                    }
                    let fp = ProviderFingerprint::of(&c.obj);
                    if seen.get(&uid) == Some(&fp) {
                        return Vec::new();
                    }
                    seen.insert(uid.clone(), fp);
                    drop(seen);
                    let mut out = consumers_assigned_to(&s2, &uid);
                    out.extend(unassigned_candidates(&s2, &c.obj));
                    out
                }
            }))
            .reconcile_on(mapped(
                secrets.subscribe(),
                move |c: &Change<PartialObjectMeta<Secret>>| {
                    let ns = c.obj.namespace().unwrap_or_default();
                    let mut out: Vec<ObjectRef<MaskConsumer>> = c
                        .obj
                        .owner_references()
                        .iter()
                        .filter(|o| o.kind == "MaskConsumer")
                        .map(|o| ObjectRef::new(&o.name).within(&ns))
                        .collect();
                    for p in providers_using_secret(&s3, &ns, &c.obj.name_any()) {
                        out.extend(consumers_assigned_to(&s3, &p.uid().unwrap_or_default()));
                    }
                    out
                },
            ))
            .reconcile_on(mapped(
                pods.subscribe(),
                move |c: &Change<PartialObjectMeta<Pod>>| {
                    let gone = c.deleted || c.obj.metadata.deletion_timestamp.is_some();
                    let ns = c.obj.namespace().unwrap_or_default();
                    c.obj
                        .owner_references()
                        .iter()
                        .filter(|o| gone && o.kind == "MaskConsumer")
                        .map(|o| ObjectRef::new(&o.name).within(&ns))
                        .collect::<Vec<_>>()
                },
            ));

    let consumer_ctl =
        consumer_ctl.reconcile_on(mapped(masks.hub.subscribe(), |c: &Change<Mask>| {
            // A deleted Mask: its consumer releases at once instead of waiting for the garbage collector.
            let gone = c.deleted || c.obj.metadata.deletion_timestamp.is_some();
            gone.then(|| {
                ObjectRef::new(&c.obj.name_any()).within(&c.obj.namespace().unwrap_or_default())
            })
        }));

    // MaskProvider controller.
    let s1 = shared.clone();
    let s2 = shared.clone();
    let s3 = shared.clone();
    let s4 = shared.clone();
    let provider_ctl =
        Controller::for_stream(live(providers.hub.subscribe()), providers.store.clone())
            .with_config(
                ControllerRunConfig::default()
                    .concurrency(8)
                    .debounce(Duration::from_millis(100)),
            )
            .reconcile_on(mapped(
                reservations.hub.subscribe(),
                move |c: &Change<MaskReservation>| {
                    let ns = c.obj.namespace().unwrap_or_default();
                    let _ = &s1;
                    c.obj
                        .owner_references()
                        .iter()
                        .filter(|o| o.kind == "MaskProvider")
                        .map(|o| ObjectRef::new(&o.name).within(&ns))
                        .collect::<Vec<_>>()
                },
            ))
            .reconcile_on(mapped(masks.hub.subscribe(), move |c: &Change<Mask>| {
                let ns = c.obj.namespace().unwrap_or_default();
                let _ = &s2;
                c.obj
                    .owner_references()
                    .iter()
                    .filter(|o| o.kind == "MaskProvider")
                    .map(|o| ObjectRef::new(&o.name).within(&ns))
                    .collect::<Vec<_>>()
            }))
            .reconcile_on(mapped(
                consumers.hub.subscribe(),
                move |c: &Change<MaskConsumer>| {
                    c.obj
                        .annotations()
                        .get(PIN_ANNOTATION)
                        .and_then(|uid| provider_by_uid(&s3, uid))
                        .map(|p| ObjectRef::from_obj(p.as_ref()))
                },
            ))
            .reconcile_on(mapped(pods.subscribe(), {
                let s = shared.clone();
                move |c: &Change<PartialObjectMeta<Pod>>| {
                    c.obj
                        .labels()
                        .get(VERIFY_LABEL)
                        .and_then(|uid| provider_by_uid(&s, uid))
                        .map(|p| ObjectRef::from_obj(p.as_ref()))
                }
            }))
            .reconcile_on(mapped(
                secrets.subscribe(),
                move |c: &Change<PartialObjectMeta<Secret>>| {
                    let ns = c.obj.namespace().unwrap_or_default();
                    providers_using_secret(&s4, &ns, &c.obj.name_any())
                        .iter()
                        .map(|p| ObjectRef::from_obj(p.as_ref()))
                        .collect::<Vec<_>>()
                },
            ));

    // MaskReservation controller.
    let s1 = shared.clone();
    let reservation_ctl = Controller::for_stream(
        live(reservations.hub.subscribe()),
        reservations.store.clone(),
    )
    .with_config(ControllerRunConfig::default().concurrency(16))
    .reconcile_on(mapped(
        consumers.hub.subscribe(),
        move |c: &Change<MaskConsumer>| {
            let uid = c.obj.uid().unwrap_or_default();
            let ns = c.obj.namespace().unwrap_or_default();
            let name = c.obj.name_any();
            s1.reservations
                .state()
                .into_iter()
                .filter(|r| r.spec.uid == uid || (r.spec.namespace == ns && r.spec.name == name))
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        },
    ));

    // Start watching, wait for the initial lists, then run.
    let mut pump_tasks = tokio::task::JoinSet::new();
    for p in pumps {
        pump_tasks.spawn(p.for_each(|_| async {}));
    }
    let all_ready = futures::future::join_all(readies.into_iter().map(wait_ready));
    tokio::select! {
        _ = all_ready => {}
        _ = shutdown.cancelled() => {
            pump_tasks.abort_all();
            return Ok(());
        }
    }
    tracing::info!(namespaces = ?config.namespaces, "caches synced; controllers running");
    config
        .synced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let controllers = futures::future::join4(
        run_controller(
            mask_ctl,
            ctx_for("Mask", |m| &m.mask),
            shutdown.clone(),
            mask::reconcile,
        ),
        run_controller(
            consumer_ctl,
            ctx_for("MaskConsumer", |m| &m.consumer),
            shutdown.clone(),
            consumer::reconcile,
        ),
        run_controller(
            provider_ctl,
            ctx_for("MaskProvider", |m| &m.provider),
            shutdown.clone(),
            provider::reconcile,
        ),
        run_controller(
            reservation_ctl,
            ctx_for("MaskReservation", |m| &m.reservation),
            shutdown.clone(),
            reservation::reconcile,
        ),
    );
    tokio::select! {
        _ = controllers => {}
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
