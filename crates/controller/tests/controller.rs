//! Integration tests of the Mask API controllers against a real API server
//! (`vpno-testenv`). One file, so one control plane serves every test; each
//! test uses its own namespaces and its own controller instance(s), scoped to
//! those namespaces. Tests play the kubelet for verification Pods.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vpno_api::names::credentials_secret_name;
use vpno_api::{
    Mask, MaskConsumer, MaskPhase, MaskProvider, MaskProviderSpec, MaskReservation, MaskSpec,
    ProviderPhase, VerifySpec,
};
use vpno_controller::{ControllerConfig, run_with_client};
use vpno_testenv::TestEnv;

/// Upper bound for any awaited condition.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- harness

/// A controller instance running in the background; stopped on drop.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(client: &Client, namespaces: &[&str]) -> Self {
        Self::start_with(
            client,
            ControllerConfig::for_namespaces(namespaces.iter().copied()),
        )
    }

    fn start_with(client: &Client, config: ControllerConfig) -> Self {
        let token = CancellationToken::new();
        let t = token.clone();
        let c = client.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = run_with_client(c, config, t).await {
                panic!("controller failed: {e}");
            }
        });
        Running { token, task }
    }

    /// Kills the controller abruptly (as a crash would).
    fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
        self.task.abort();
    }
}

/// Set by background checkers; every wait fails the test as soon as it is set.
type Violation = Arc<Mutex<Option<String>>>;

async fn eventually_checked<T>(
    what: &str,
    violation: Option<&Violation>,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = violation
            && let Some(msg) = v.lock().unwrap().clone()
        {
            panic!("invariant violated while waiting for {what}: {msg}");
        }
        if let Some(out) = f().await {
            return out;
        }
        if Instant::now() > deadline {
            panic!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eventually<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_checked(what, None, f).await
}

async fn setup(prefixes: &[&str]) -> Option<(Client, Vec<String>)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let env = TestEnv::shared()?;
    let client = env.client().await;
    let mut namespaces = Vec::new();
    for p in prefixes {
        namespaces.push(env.new_namespace(p).await);
    }
    Some((client, namespaces))
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

async fn create_secret(client: &Client, ns: &str, name: &str, pairs: &[(&str, &str)]) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data(pairs)),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create secret");
}

/// A provider whose Secret `<name>-creds` exists, verification skipped.
struct ProviderBuilder {
    name: String,
    spec: MaskProviderSpec,
    create_secret: bool,
}

fn provider(name: &str, max_slots: u32) -> ProviderBuilder {
    ProviderBuilder {
        name: name.into(),
        spec: MaskProviderSpec {
            secret: format!("{name}-creds"),
            max_slots,
            tags: None,
            namespaces: None,
            verify: Some(VerifySpec {
                skip: Some(true),
                ..Default::default()
            }),
        },
        create_secret: true,
    }
}

impl ProviderBuilder {
    fn tags(mut self, tags: &[&str]) -> Self {
        self.spec.tags = Some(tags.iter().map(|s| s.to_string()).collect());
        self
    }
    fn namespaces(mut self, ns: &[&str]) -> Self {
        self.spec.namespaces = Some(ns.iter().map(|s| s.to_string()).collect());
        self
    }
    fn verify(mut self, v: VerifySpec) -> Self {
        self.spec.verify = Some(v);
        self
    }
    fn without_secret(mut self) -> Self {
        self.create_secret = false;
        self
    }
    async fn create(self, client: &Client, ns: &str) -> MaskProvider {
        if self.create_secret {
            let name = self.name.as_str();
            create_secret(
                client,
                ns,
                &self.spec.secret,
                &[("VPN_SERVICE_PROVIDER", name), ("OPENVPN_USER", "user")],
            )
            .await;
        }
        let p = MaskProvider::new(&self.name, self.spec);
        Api::<MaskProvider>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &p)
            .await
            .expect("create provider")
    }
}

async fn create_mask(client: &Client, ns: &str, name: &str, tags: Option<&[&str]>) -> Mask {
    let m = Mask::new(
        name,
        MaskSpec {
            providers: tags.map(|t| t.iter().map(|s| s.to_string()).collect()),
        },
    );
    Api::<Mask>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &m)
        .await
        .expect("create mask")
}

async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
}

async fn wait_provider_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: ProviderPhase,
) -> MaskProvider {
    let api = Api::<MaskProvider>::namespaced(client.clone(), ns);
    eventually(
        &format!("provider {ns}/{name} to be {phase:?}"),
        async || {
            api.get_opt(name)
                .await
                .unwrap()
                .filter(|p| p.phase() == phase)
        },
    )
    .await
}

async fn wait_mask_phase(client: &Client, ns: &str, name: &str, phase: MaskPhase) -> Mask {
    let api = Api::<Mask>::namespaced(client.clone(), ns);
    eventually(&format!("mask {ns}/{name} to be {phase:?}"), async || {
        api.get_opt(name)
            .await
            .unwrap()
            .filter(|m| m.phase() == phase)
    })
    .await
}

async fn consumer(client: &Client, ns: &str, name: &str) -> Option<MaskConsumer> {
    Api::<MaskConsumer>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

async fn reservations(client: &Client, ns: &str) -> Vec<MaskReservation> {
    Api::<MaskReservation>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

async fn masks_in(client: &Client, ns: &str) -> Vec<Mask> {
    Api::<Mask>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<K8sEvent> {
    Api::<K8sEvent>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Every reservation is held by an existing consumer of the same uid whose
/// status points at it, and no provider holds more than `maxSlots`.
async fn assert_no_leaks(client: &Client, provider_ns: &str) {
    let providers = Api::<MaskProvider>::namespaced(client.clone(), provider_ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let max: HashMap<String, u32> = providers
        .iter()
        .map(|p| (p.uid().unwrap(), p.spec.max_slots))
        .collect();
    let mut per_provider: HashMap<String, u32> = HashMap::new();
    for r in reservations(client, provider_ns).await {
        let c = consumer(client, &r.spec.namespace, &r.spec.name).await;
        let c = c.unwrap_or_else(|| {
            panic!(
                "reservation {} leaked: consumer {} gone",
                r.name_any(),
                r.spec.name
            )
        });
        assert_eq!(
            c.uid().as_deref(),
            Some(r.spec.uid.as_str()),
            "reservation {} held for another consumer",
            r.name_any()
        );
        let a = c.assignment().unwrap_or_else(|| {
            panic!(
                "consumer {} holds {} without recording it",
                c.name_any(),
                r.name_any()
            )
        });
        assert_eq!(
            Some(a.reservation.as_str()),
            r.uid().as_deref(),
            "consumer {} records another reservation",
            c.name_any()
        );
        let owner = r
            .owner_references()
            .iter()
            .find(|o| o.kind == "MaskProvider")
            .expect("reservation owned by provider")
            .uid
            .clone();
        *per_provider.entry(owner).or_default() += 1;
    }
    for (uid, n) in per_provider {
        assert!(
            n <= max.get(&uid).copied().unwrap_or(0),
            "provider {uid} holds {n} reservations, more than maxSlots"
        );
    }
}

/// Watches reservations in `ns` and records a violation the moment any
/// provider holds more reservations than its maxSlots.
fn watch_over_assignment(
    client: &Client,
    ns: &str,
    max: HashMap<String, u32>,
) -> (Violation, tokio::task::JoinHandle<()>) {
    let violation: Violation = Arc::new(Mutex::new(None));
    let v = violation.clone();
    let api = Api::<MaskReservation>::namespaced(client.clone(), ns);
    let task = tokio::spawn(async move {
        let mut held: HashMap<String, String> = HashMap::new(); // reservation name -> provider name
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            match ev {
                watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                    let owner = r
                        .owner_references()
                        .iter()
                        .find(|o| o.kind == "MaskProvider")
                        .map(|o| o.name.clone())
                        .unwrap_or_default();
                    held.insert(r.name_any(), owner);
                }
                watcher::Event::Delete(r) => {
                    held.remove(&r.name_any());
                }
                _ => {}
            }
            for (p, limit) in &max {
                let n = held.values().filter(|o| *o == p).count() as u32;
                if n > *limit {
                    *v.lock().unwrap() = Some(format!(
                        "provider {p} holds {n} reservations > maxSlots {limit}"
                    ));
                }
            }
        }
    });
    (violation, task)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn assigns_a_slot_and_copies_credentials_exactly() {
    let Some((client, ns)) = setup(&["assign"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("nord", 2).create(&client, ns).await;
    wait_provider_phase(&client, ns, "nord", ProviderPhase::Ready).await;
    let mask = create_mask(&client, ns, "job", None).await;
    wait_mask_phase(&client, ns, "job", MaskPhase::Active).await;

    let c = consumer(&client, ns, "job").await.expect("consumer exists");
    let owner = c
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .expect("controller owner");
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Mask", mask.uid().as_ref())
    );
    assert_eq!(c.phase(), MaskPhase::Active);
    let a = c.assignment().expect("assignment").clone();
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("nord", ns.as_str())
    );
    assert_eq!(Some(&a.uid), p.uid().as_ref());
    assert!(a.slot < 2);

    let rs = reservations(&client, ns).await;
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r.name_any(), format!("nord-{}", a.slot));
    assert_eq!(
        (r.spec.name.as_str(), r.spec.namespace.as_str()),
        ("job", ns.as_str())
    );
    assert_eq!(Some(&r.spec.uid), c.uid().as_ref());
    assert_eq!(r.uid().as_ref(), Some(&a.reservation));
    assert_eq!(r.owner_references()[0].uid, p.uid().unwrap());

    let secret_name = credentials_secret_name("job", &p.uid().unwrap());
    assert_eq!(a.secret, secret_name);
    let copy = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&secret_name)
        .await
        .unwrap();
    let source = Api::<Secret>::namespaced(client.clone(), ns)
        .get("nord-creds")
        .await
        .unwrap();
    assert_eq!(copy.data, source.data);
    assert_eq!(copy.owner_references()[0].uid, c.uid().unwrap());

    let api = Api::<MaskReservation>::namespaced(client.clone(), ns);
    eventually("reservation Active", async || {
        api.get(&r.name_any())
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .filter(|p| *p == vpno_api::ReservationPhase::Active)
    })
    .await;
    let p = wait_provider_phase(&client, ns, "nord", ProviderPhase::Active).await;
    assert_eq!(p.status.unwrap().active_slots, Some(1));
    let m = Api::<Mask>::namespaced(client.clone(), ns)
        .get("job")
        .await
        .unwrap();
    assert!(m.status.unwrap().last_updated.is_some());
}

#[tokio::test]
async fn cross_namespace_masks_tags_and_allow_lists() {
    let Some((client, ns)) = setup(&["xns-vpn", "xns-apps", "xns-other"]).await else {
        return;
    };
    let (vpn, apps, other) = (&ns[0], &ns[1], &ns[2]);
    let _ctl = Running::start(&client, &[vpn, apps, other]);
    provider("se", 3)
        .tags(&["sweden", "eu"])
        .namespaces(&[apps])
        .create(&client, vpn)
        .await;
    wait_provider_phase(&client, vpn, "se", ProviderPhase::Ready).await;

    create_mask(&client, apps, "a", Some(&["us", "eu"])).await;
    create_mask(&client, apps, "untagged", None).await;
    create_mask(&client, apps, "wrong-tag", Some(&["us"])).await;
    create_mask(&client, other, "not-allowed", None).await;

    wait_mask_phase(&client, apps, "a", MaskPhase::Active).await;
    wait_mask_phase(&client, apps, "untagged", MaskPhase::Active).await;
    let c = consumer(&client, apps, "a").await.unwrap();
    let a = c.assignment().unwrap();
    assert_eq!(a.namespace, *vpn);
    let secret = Api::<Secret>::namespaced(client.clone(), apps)
        .get(&a.secret)
        .await
        .expect("credentials copied into the Mask's namespace");
    assert_eq!(
        secret.data,
        Some(data(&[
            ("VPN_SERVICE_PROVIDER", "se"),
            ("OPENVPN_USER", "user")
        ]))
    );

    let m = wait_mask_phase(&client, apps, "wrong-tag", MaskPhase::ErrNoProviders).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(
        msg.contains(&format!("{vpn}/se (no matching tag)")),
        "{msg}"
    );
    let m = wait_mask_phase(&client, other, "not-allowed", MaskPhase::ErrNoProviders).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(msg.contains("namespace not allowed"), "{msg}");
    eventually("a NoProviders event on the Mask", async || {
        events_about(&client, other, "not-allowed")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NoProviders"))
    })
    .await;
}

#[tokio::test]
async fn prefers_the_provider_with_most_free_slots() {
    let Some((client, ns)) = setup(&["prefer"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("small", 1).create(&client, ns).await;
    provider("big", 4).create(&client, ns).await;
    wait_provider_phase(&client, ns, "small", ProviderPhase::Ready).await;
    wait_provider_phase(&client, ns, "big", ProviderPhase::Ready).await;
    for name in ["m1", "m2"] {
        create_mask(&client, ns, name, None).await;
        wait_mask_phase(&client, ns, name, MaskPhase::Active).await;
        let c = consumer(&client, ns, name).await.unwrap();
        assert_eq!(
            c.assignment().unwrap().name,
            "big",
            "{name} should go to the provider with more free slots"
        );
    }
}

#[tokio::test]
async fn waiting_mask_gets_the_slot_once_the_consumer_and_its_pods_are_gone() {
    let Some((client, ns)) = setup(&["release"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("solo", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "solo", ProviderPhase::Ready).await;
    create_mask(&client, ns, "first", None).await;
    wait_mask_phase(&client, ns, "first", MaskPhase::Active).await;
    create_mask(&client, ns, "second", None).await;
    let m = wait_mask_phase(&client, ns, "second", MaskPhase::Waiting).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(
        msg.contains(&format!("{ns}/solo (maxSlots 1)")),
        "Waiting message names the providers: {msg}"
    );

    // A Pod using the credentials, owned by the consumer, that takes a while to stop.
    let c1 = consumer(&client, ns, "first").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "worker", "finalizers": ["test.vpn.beebs.dev/hold"],
            "ownerReferences": [{"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskConsumer", "name": "first", "uid": c1.uid().unwrap()}]},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "envFrom": [{"secretRef": {"name": c1.assignment().unwrap().secret}}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    delete(&Api::<Mask>::namespaced(client.clone(), ns), "first").await;
    // The controller deletes the Pod; while it is stopping, the slot stays held.
    eventually(
        "the consumer's Pod to be deleted by the controller",
        async || {
            pods.get("worker")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
        },
    )
    .await;
    let c = consumer(&client, ns, "first")
        .await
        .expect("consumer held by its finalizer while a Pod remains");
    assert!(c.metadata.deletion_timestamp.is_some());
    assert_eq!(
        reservations(&client, ns).await.len(),
        1,
        "slot released while a Pod still used the credentials"
    );
    assert_eq!(
        Api::<Mask>::namespaced(client.clone(), ns)
            .get("second")
            .await
            .unwrap()
            .phase(),
        MaskPhase::Waiting
    );

    // The Pod stops: the slot is released and handed to the waiting Mask.
    pods.patch(
        "worker",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let freed_at = Instant::now();
    wait_mask_phase(&client, ns, "second", MaskPhase::Active).await;
    eprintln!(
        "waiting -> Active {:?} after the last Pod went away",
        freed_at.elapsed()
    );
    eventually("first consumer gone", async || {
        consumer(&client, ns, "first").await.is_none().then_some(())
    })
    .await;
    let c1_secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&c1.assignment().unwrap().secret)
        .await
        .unwrap();
    // The second Mask has its own copy; the first consumer's copy is gone.
    assert!(c1_secret.is_none_or(|s| {
        s.owner_references()
            .iter()
            .all(|o| Some(&o.uid) != c1.uid().as_ref())
    }));
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn slot_is_held_until_pods_of_workloads_owned_by_the_consumer_are_gone() {
    let Some((client, ns)) = setup(&["workloads"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("solo", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "solo", ProviderPhase::Ready).await;
    create_mask(&client, ns, "first", None).await;
    wait_mask_phase(&client, ns, "first", MaskPhase::Active).await;
    create_mask(&client, ns, "second", None).await;
    wait_mask_phase(&client, ns, "second", MaskPhase::Waiting).await;
    let c1 = consumer(&client, ns, "first").await.unwrap();
    let c1_uid = c1.uid().unwrap();
    let secret = c1.assignment().unwrap().secret.clone();
    let held = reservations(&client, ns).await;
    assert_eq!(held.len(), 1);
    let held_uid = held[0].uid().unwrap();
    assert_eq!(held[0].spec.uid, c1_uid);

    // A Deployment owned by the consumer, with the ReplicaSet and Pod a real
    // deployment controller would make (the test env runs only the GC).
    let template = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "envFrom": [{"secretRef": {"name": secret}}]}]}
    });
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "ownerReferences": [{"apiVersion": "vpn.beebs.dev/v1",
            "kind": "MaskConsumer", "name": "first", "uid": c1_uid}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let replicasets = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-5d8f", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "Deployment", "name": "web", "uid": deployment.uid().unwrap(),
            "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let rs = replicasets
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    // "web-5d8f-x2k" as the ReplicaSet controller makes it (blocking its
    // owner's deletion); "web-5d8f-old" without blockOwnerDeletion, so only
    // its use of the credentials can hold the slot once its owners are gone.
    for (name, block) in [("web-5d8f-x2k", true), ("web-5d8f-old", false)] {
        let mut pod = template.clone();
        pod["metadata"] = json!({"name": name, "labels": {"app": "web"},
            "finalizers": ["test.vpn.beebs.dev/hold"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                "uid": rs.uid().unwrap(), "controller": true, "blockOwnerDeletion": block}]});
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let release_pod = async |name: &str| {
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    };
    // While a Pod using the credentials exists, the slot does not change hands.
    let assert_slot_held = async |why: &str| {
        let window = Instant::now() + Duration::from_secs(2);
        while Instant::now() < window {
            let now: Vec<_> = reservations(&client, ns)
                .await
                .into_iter()
                .map(|r| (r.uid().unwrap(), r.spec.uid))
                .collect();
            assert_eq!(
                now,
                [(held_uid.clone(), c1_uid.clone())],
                "slot released while {why}"
            );
            let second = Api::<Mask>::namespaced(client.clone(), ns)
                .get("second")
                .await
                .unwrap();
            assert_eq!(second.phase(), MaskPhase::Waiting, "while {why}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    delete(&Api::<Mask>::namespaced(client.clone(), ns), "first").await;
    // The controller deletes the Deployment in the foreground; the GC then
    // deletes the ReplicaSet and its Pods, which the test keeps stopping.
    for name in ["web-5d8f-x2k", "web-5d8f-old"] {
        eventually(&format!("Pod {name} to be deleted"), async || {
            pods.get(name).await.unwrap().metadata.deletion_timestamp
        })
        .await;
    }
    assert_slot_held("a Pod of the consumer's Deployment still used the credentials").await;
    let d = deployments
        .get_opt("web")
        .await
        .unwrap()
        .expect("the Deployment stays while its Pod is stopping (foreground deletion)");
    assert!(
        d.metadata.deletion_timestamp.is_some()
            && d.finalizers().iter().any(|f| f == "foregroundDeletion"),
        "the Deployment is deleted in the foreground: {:?}",
        d.metadata
    );
    let c = consumer(&client, ns, "first")
        .await
        .expect("consumer held by its finalizer while the Pods remain");
    let msg = c.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        msg.contains("Pod web-5d8f-") && msg.contains("Deployment web"),
        "the consumer says what holds the slot: {msg}"
    );

    // The blocking Pod stops: the GC removes the ReplicaSet and Deployment,
    // but the other Pod still uses the credentials.
    release_pod("web-5d8f-x2k").await;
    eventually("the Deployment and ReplicaSet to be gone", async || {
        (deployments.get_opt("web").await.unwrap().is_none()
            && replicasets.get_opt("web-5d8f").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    assert_slot_held("a Pod no longer owned by anything still used the credentials").await;

    // The last Pod stops: the waiting Mask gets the slot.
    release_pod("web-5d8f-old").await;
    wait_mask_phase(&client, ns, "second", MaskPhase::Active).await;
    eventually("first consumer gone", async || {
        consumer(&client, ns, "first").await.is_none().then_some(())
    })
    .await;
    let r = reservations(&client, ns).await;
    assert_eq!(r.len(), 1);
    assert_ne!(r[0].spec.uid, c1_uid);
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn deleting_a_provider_unassigns_its_consumers_and_leaves_no_reservation() {
    let Some((client, ns)) = setup(&["provdel"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("one", 2).create(&client, ns).await;
    wait_provider_phase(&client, ns, "one", ProviderPhase::Ready).await;
    for m in ["a", "b"] {
        create_mask(&client, ns, m, None).await;
        wait_mask_phase(&client, ns, m, MaskPhase::Active).await;
    }
    provider("two", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "two", ProviderPhase::Ready).await;

    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    delete(&papi, "one").await;
    eventually("provider one gone", async || {
        papi.get_opt("one").await.unwrap().is_none().then_some(())
    })
    .await;
    // One Mask moves to the other provider, the other waits for it.
    eventually("one Mask reassigned to two and one Waiting", async || {
        let phases: Vec<MaskPhase> = masks_in(&client, ns)
            .await
            .iter()
            .map(|m| m.phase())
            .collect();
        (phases.iter().filter(|p| **p == MaskPhase::Active).count() == 1
            && phases.iter().filter(|p| **p == MaskPhase::Waiting).count() == 1)
            .then_some(())
    })
    .await;
    let rs = reservations(&client, ns).await;
    assert!(
        rs.iter().all(|r| r.name_any().starts_with("two-")),
        "reservations of a deleted provider left: {rs:?}"
    );

    delete(&papi, "two").await;
    for m in ["a", "b"] {
        let mask = wait_mask_phase(&client, ns, m, MaskPhase::ErrNoProviders).await;
        assert!(
            mask.status
                .unwrap()
                .message
                .unwrap()
                .contains("no eligible provider")
        );
    }
    eventually("no reservation left", async || {
        reservations(&client, ns).await.is_empty().then_some(())
    })
    .await;
    eventually("provider two gone", async || {
        papi.get_opt("two").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn lowering_max_slots_evicts_the_highest_slots() {
    let Some((client, ns)) = setup(&["evict"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("p", 3).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    for m in ["m0", "m1", "m2"] {
        create_mask(&client, ns, m, None).await;
        wait_mask_phase(&client, ns, m, MaskPhase::Active).await;
    }
    let mut by_slot = BTreeMap::new();
    for m in ["m0", "m1", "m2"] {
        let c = consumer(&client, ns, m).await.unwrap();
        by_slot.insert(c.assignment().unwrap().slot, (m, c.uid().unwrap()));
    }
    assert_eq!(by_slot.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let (keeper, keeper_uid) = by_slot[&0].clone();

    Api::<MaskProvider>::namespaced(client.clone(), ns)
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxSlots": 1}})),
        )
        .await
        .unwrap();
    eventually("only slot 0 held, the others Waiting", async || {
        let rs = reservations(&client, ns).await;
        let waiting = masks_in(&client, ns)
            .await
            .iter()
            .filter(|m| m.phase() == MaskPhase::Waiting)
            .count();
        (rs.len() == 1 && rs[0].name_any() == "p-0" && waiting == 2).then_some(())
    })
    .await;
    let c = consumer(&client, ns, keeper).await.unwrap();
    assert_eq!(
        c.uid().unwrap(),
        keeper_uid,
        "the consumer on the lowest slot is not evicted"
    );
    assert_eq!(c.phase(), MaskPhase::Active);
    eventually("an Evicted event", async || {
        events_about(&client, ns, "p")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Evicted"))
    })
    .await;
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn provider_secret_changes_reach_every_copy() {
    let Some((client, ns)) = setup(&["secret-prov", "secret-apps"]).await else {
        return;
    };
    let (vpn, apps) = (&ns[0], &ns[1]);
    let _ctl = Running::start(&client, &[vpn, apps]);
    let p = provider("p", 2).create(&client, vpn).await;
    wait_provider_phase(&client, vpn, "p", ProviderPhase::Ready).await;
    create_mask(&client, apps, "x", None).await;
    create_mask(&client, vpn, "y", None).await;
    wait_mask_phase(&client, apps, "x", MaskPhase::Active).await;
    wait_mask_phase(&client, vpn, "y", MaskPhase::Active).await;

    let new = data(&[
        ("VPN_SERVICE_PROVIDER", "p"),
        ("WIREGUARD_PRIVATE_KEY", "k2"),
    ]);
    let mut s = Api::<Secret>::namespaced(client.clone(), vpn)
        .get("p-creds")
        .await
        .unwrap();
    s.data = Some(new.clone());
    Api::<Secret>::namespaced(client.clone(), vpn)
        .replace("p-creds", &PostParams::default(), &s)
        .await
        .unwrap();
    let uid = p.uid().unwrap();
    for (ns, m) in [(apps, "x"), (vpn, "y")] {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        let name = credentials_secret_name(m, &uid);
        eventually(
            &format!("copy {ns}/{name} to equal the new data (key removed, key added)"),
            async || {
                api.get(&name)
                    .await
                    .unwrap()
                    .data
                    .filter(|d| *d == new)
                    .map(|_| ())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn consumers_without_status_are_handled() {
    let Some((client, ns)) = setup(&["nostatus"]).await else {
        return;
    };
    let ns = &ns[0];
    // Consumers whose status is absent or partial exist before the controller starts.
    let capi = Api::<MaskConsumer>::namespaced(client.clone(), ns);
    let bare = MaskConsumer::new("bare", Default::default());
    capi.create(&PostParams::default(), &bare).await.unwrap();
    let partial = MaskConsumer::new("partial", Default::default());
    capi.create(&PostParams::default(), &partial).await.unwrap();
    capi.patch_status(
        "partial",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"message": "written by someone else"}})),
    )
    .await
    .unwrap();
    let ctl = Running::start(&client, &[ns]);
    provider("p", 3).create(&client, ns).await;
    for name in ["bare", "partial"] {
        eventually(&format!("consumer {name} assigned"), async || {
            capi.get(name).await.unwrap().assignment().map(|_| ())
        })
        .await;
    }
    create_mask(&client, ns, "after", None).await;
    wait_mask_phase(&client, ns, "after", MaskPhase::Active).await;
    assert!(!ctl.task.is_finished(), "controller must still run");
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn orphaned_reservations_are_reclaimed() {
    let Some((client, ns)) = setup(&["orphan"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("p", 4).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    create_mask(&client, ns, "real", None).await;
    wait_mask_phase(&client, ns, "real", MaskPhase::Active).await;
    let taken = consumer(&client, ns, "real")
        .await
        .unwrap()
        .assignment()
        .unwrap()
        .slot;
    let free: Vec<u32> = (0..4).filter(|s| *s != taken).collect();
    let rapi = Api::<MaskReservation>::namespaced(client.clone(), ns);
    let owner = json!([{"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskProvider", "name": "p", "uid": p.uid().unwrap(), "controller": true}]);
    let ghost: MaskReservation = serde_json::from_value(
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskReservation",
        "metadata": {"name": format!("p-{}", free[0]), "ownerReferences": owner},
        "spec": {"name": "ghost", "namespace": ns, "uid": "00000000-0000-0000-0000-000000000000"}}),
    )
    .unwrap();
    let impostor: MaskReservation = serde_json::from_value(
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskReservation",
        "metadata": {"name": format!("p-{}", free[1]), "ownerReferences": owner},
        "spec": {"name": "real", "namespace": ns, "uid": "11111111-1111-1111-1111-111111111111"}}),
    )
    .unwrap();
    rapi.create(&PostParams::default(), &ghost).await.unwrap();
    rapi.create(&PostParams::default(), &impostor)
        .await
        .unwrap();
    eventually("both orphaned reservations reclaimed", async || {
        let names: Vec<String> = reservations(&client, ns)
            .await
            .iter()
            .map(|r| r.name_any())
            .collect();
        (names == vec![format!("p-{taken}")]).then_some(())
    })
    .await;
    assert_eq!(
        Api::<Mask>::namespaced(client.clone(), ns)
            .get("real")
            .await
            .unwrap()
            .phase(),
        MaskPhase::Active
    );
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn freeing_many_slots_refills_them_all_promptly() {
    let Some((client, ns)) = setup(&["refill"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("p", 10).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    for i in 0..20 {
        create_mask(&client, ns, &format!("m{i}"), None).await;
    }
    let count = async |phase: MaskPhase| {
        masks_in(&client, ns)
            .await
            .iter()
            .filter(|m| m.phase() == phase)
            .count()
    };
    eventually("10 Active and 10 Waiting", async || {
        (count(MaskPhase::Active).await == 10 && count(MaskPhase::Waiting).await == 10)
            .then_some(())
    })
    .await;
    let active: Vec<String> = masks_in(&client, ns)
        .await
        .into_iter()
        .filter(|m| m.phase() == MaskPhase::Active)
        .map(|m| m.name_any())
        .collect();
    let mapi = Api::<Mask>::namespaced(client.clone(), ns);
    let start = Instant::now();
    for name in &active {
        delete(&mapi, name).await;
    }
    eventually("all 10 waiting Masks Active", async || {
        let ms = masks_in(&client, ns).await;
        (ms.len() == 10 && ms.iter().all(|m| m.phase() == MaskPhase::Active)).then_some(())
    })
    .await;
    eprintln!("10 freed slots refilled in {:?}", start.elapsed());
    eventually("exactly 10 reservations", async || {
        (reservations(&client, ns).await.len() == 10).then_some(())
    })
    .await;
    assert_no_leaks(&client, ns).await;
}

async fn play_kubelet(client: &Client, ns: &str, pod: &str, status: serde_json::Value) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn verification_pod_holds_a_slot_and_success_makes_ready() {
    let Some((client, ns)) = setup(&["verify-ok"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let overrides: vpno_api::VerifyOverrides = serde_json::from_value(json!({
        "pod": {"metadata": {"labels": {"team": "vpn"}}, "spec": {"nodeSelector": {"vpn": "yes"}}},
        "containers": {"vpn": {"image": "example/gluetun:test", "env": [{"name": "VPN_TYPE", "value": "wireguard"}]}}
    }))
    .unwrap();
    let p = provider("v", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("1m".into()),
            interval: None,
            overrides: Some(overrides),
        })
        .create(&client, ns)
        .await;
    create_mask(&client, ns, "early", None).await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod = eventually("the verification pod", async || {
        pods.get_opt("vpno-verify-v").await.unwrap()
    })
    .await;
    let prov = Api::<MaskProvider>::namespaced(client.clone(), ns)
        .get("v")
        .await
        .unwrap();
    assert_eq!(prov.phase(), ProviderPhase::Verifying);
    let early = Api::<Mask>::namespaced(client.clone(), ns)
        .get("early")
        .await
        .unwrap();
    assert_ne!(
        early.phase(),
        MaskPhase::Active,
        "no Mask is assigned to an unverified provider"
    );
    // The pod uses a slot through its own Mask.
    let rs = reservations(&client, ns).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].spec.name, "vpno-verify-v");
    let spec = pod.spec.clone().unwrap();
    let names: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["init", "vpn", "probe"]);
    let vpn = &spec.containers[0];
    assert_eq!(vpn.image.as_deref(), Some("example/gluetun:test"));
    assert_eq!(
        vpn.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        credentials_secret_name("vpno-verify-v", &p.uid().unwrap())
    );
    assert_eq!(spec.node_selector.unwrap()["vpn"], "yes");
    assert_eq!(pod.labels()["team"], "vpn");

    play_kubelet(&client, ns, "vpno-verify-v", json!({"phase": "Succeeded"})).await;
    let prov = wait_provider_phase(&client, ns, "v", ProviderPhase::Active).await;
    assert!(prov.status.unwrap().last_verified.is_some());
    wait_mask_phase(&client, ns, "early", MaskPhase::Active).await;
    eventually("verification Mask, consumer and Pod gone", async || {
        let gone = Api::<Mask>::namespaced(client.clone(), ns)
            .get_opt("vpno-verify-v")
            .await
            .unwrap()
            .is_none()
            && pods.get_opt("vpno-verify-v").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    eventually(
        "the verification slot released (activeSlots 1, one reservation)",
        async || {
            let used = papi
                .get("v")
                .await
                .unwrap()
                .status
                .and_then(|s| s.active_slots);
            (used == Some(1) && reservations(&client, ns).await.len() == 1).then_some(())
        },
    )
    .await;
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn verification_failure_timeout_and_missing_secret_are_reported() {
    let Some((client, ns)) = setup(&["verify-bad"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let verify = |timeout: &str| VerifySpec {
        skip: None,
        timeout: Some(timeout.into()),
        interval: None,
        overrides: None,
    };
    provider("fails", 1)
        .verify(verify("1m"))
        .create(&client, ns)
        .await;
    provider("slow", 1)
        .verify(verify("2s"))
        .create(&client, ns)
        .await;
    provider("nosecret", 1)
        .without_secret()
        .create(&client, ns)
        .await;
    let bad: vpno_api::VerifyOverrides =
        serde_json::from_value(json!({"pod": {"spec": {"restartPolicy": "Sometimes"}}})).unwrap();
    provider("badpod", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("1m".into()),
            interval: None,
            overrides: Some(bad),
        })
        .create(&client, ns)
        .await;

    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually("verification pod of 'fails'", async || {
        pods.get_opt("vpno-verify-fails").await.unwrap()
    })
    .await;
    play_kubelet(
        &client,
        ns,
        "vpno-verify-fails",
        json!({"phase": "Failed", "containerStatuses": [
        {"name": "vpn", "ready": false, "restartCount": 0, "image": "qmcgaw/gluetun", "imageID": "",
         "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "AUTH_FAILED"}}}]}),
    )
    .await;
    let p = wait_provider_phase(&client, ns, "fails", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(
        msg.contains("container vpn terminated with exit code 1") && msg.contains("AUTH_FAILED"),
        "{msg}"
    );
    eventually("ErrVerifyFailed event on 'fails'", async || {
        events_about(&client, ns, "fails")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ErrVerifyFailed"))
    })
    .await;

    // The user fixes the provider: editing its spec verifies it again.
    eventually("the failed verification pod gone", async || {
        pods.get_opt("vpno-verify-fails")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    Api::<MaskProvider>::namespaced(client.clone(), ns)
        .patch("fails", &PatchParams::default(), &Patch::Merge(json!({"spec": {"verify": {"overrides": {"containers": {"vpn": {"image": "fixed/gluetun"}}}}}})))
        .await
        .unwrap();
    let pod = eventually("a new verification pod of 'fails'", async || {
        pods.get_opt("vpno-verify-fails").await.unwrap()
    })
    .await;
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("fixed/gluetun")
    );
    play_kubelet(
        &client,
        ns,
        "vpno-verify-fails",
        json!({"phase": "Succeeded"}),
    )
    .await;
    wait_provider_phase(&client, ns, "fails", ProviderPhase::Ready).await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    delete(&papi, "fails").await;
    eventually("provider 'fails' gone", async || {
        papi.get_opt("fails").await.unwrap().is_none().then_some(())
    })
    .await;

    let p = wait_provider_phase(&client, ns, "slow", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(msg.contains("timed out after 2s"), "{msg}");

    let p = wait_provider_phase(&client, ns, "badpod", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(
        msg.contains("rejected the verification pod") && msg.contains("restartPolicy"),
        "{msg}"
    );

    let p = wait_provider_phase(&client, ns, "nosecret", ProviderPhase::ErrSecretNotFound).await;
    assert!(
        p.status
            .unwrap()
            .message
            .unwrap()
            .contains("nosecret-creds")
    );

    for (name, reason) in [
        ("slow", "ErrVerifyFailed"),
        ("nosecret", "ErrSecretNotFound"),
    ] {
        eventually(&format!("{reason} event on {name}"), async || {
            events_about(&client, ns, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await;
    }
    // Failed verification frees its slot.
    eventually("verification slots freed", async || {
        reservations(&client, ns).await.is_empty().then_some(())
    })
    .await;
    // A Mask has nowhere to go.
    create_mask(&client, ns, "m", None).await;
    wait_mask_phase(&client, ns, "m", MaskPhase::ErrNoProviders).await;

    // The Secret appears: the provider (verification skipped) becomes usable and the Mask is assigned.
    create_secret(
        &client,
        ns,
        "nosecret-creds",
        &[("VPN_SERVICE_PROVIDER", "x")],
    )
    .await;
    wait_mask_phase(&client, ns, "m", MaskPhase::Active).await;
    assert_eq!(
        consumer(&client, ns, "m")
            .await
            .unwrap()
            .assignment()
            .unwrap()
            .name,
        "nosecret"
    );
}

#[tokio::test]
async fn reverification_waits_for_a_free_slot_and_never_exceeds_max_slots() {
    let Some((client, ns)) = setup(&["reverify"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("r", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("5m".into()),
            interval: Some("1s".into()),
            overrides: None,
        })
        .create(&client, ns)
        .await;
    let (violation, watch) = watch_over_assignment(&client, ns, [("r".to_string(), 1)].into());
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually_checked("first verification pod", Some(&violation), async || {
        pods.get_opt("vpno-verify-r").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-r", json!({"phase": "Succeeded"})).await;
    let first = wait_provider_phase(&client, ns, "r", ProviderPhase::Ready)
        .await
        .status
        .unwrap()
        .last_verified
        .unwrap();
    create_mask(&client, ns, "user", None).await;
    eventually_checked("user Mask Active", Some(&violation), async || {
        (Api::<Mask>::namespaced(client.clone(), ns)
            .get("user")
            .await
            .unwrap()
            .phase()
            == MaskPhase::Active)
            .then_some(())
    })
    .await;
    // Interval due: the re-verification Mask waits, the provider stays usable.
    let vmasks = Api::<Mask>::namespaced(client.clone(), ns);
    eventually_checked(
        "re-verification Mask Waiting",
        Some(&violation),
        async || {
            vmasks
                .get_opt("vpno-verify-r")
                .await
                .unwrap()
                .filter(|m| m.phase() == MaskPhase::Waiting)
        },
    )
    .await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    let prov = eventually_checked(
        "provider to report the wait for a slot",
        Some(&violation),
        async || {
            papi.get("r").await.unwrap().status.filter(|s| {
                s.message
                    .as_deref()
                    .is_some_and(|m| m.contains("waiting for a slot"))
            })
        },
    )
    .await;
    assert_eq!(
        prov.phase,
        Some(ProviderPhase::Active),
        "re-verification keeps a verified provider usable"
    );
    assert!(
        pods.get_opt("vpno-verify-r").await.unwrap().is_none(),
        "no verification pod without a slot"
    );
    delete(&vmasks, "user").await;
    eventually_checked("second verification pod", Some(&violation), async || {
        pods.get_opt("vpno-verify-r").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-r", json!({"phase": "Succeeded"})).await;
    eventually_checked("lastVerified to advance", Some(&violation), async || {
        papi.get("r")
            .await
            .unwrap()
            .status
            .and_then(|s| s.last_verified)
            .filter(|t| *t != first)
    })
    .await;
    assert!(violation.lock().unwrap().is_none());
    watch.abort();
    let _ = p;
}

#[tokio::test]
async fn two_controllers_never_over_assign_under_concurrent_churn() {
    let Some((client, ns)) = setup(&["race-vpn", "race-apps"]).await else {
        return;
    };
    let (vpn, apps) = (&ns[0], &ns[1]);
    let _a = Running::start(&client, &[vpn, apps]);
    let _b = Running::start(&client, &[vpn, apps]);
    provider("p3", 3).create(&client, vpn).await;
    provider("p4", 4).create(&client, vpn).await;
    wait_provider_phase(&client, vpn, "p3", ProviderPhase::Ready).await;
    wait_provider_phase(&client, vpn, "p4", ProviderPhase::Ready).await;
    let (violation, watch) = watch_over_assignment(
        &client,
        vpn,
        [("p3".to_string(), 3), ("p4".to_string(), 4)].into(),
    );

    // 24 Masks created concurrently; every third one deleted again while the rest are still coming.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = client.clone();
        let apps = apps.clone();
        tasks.push(tokio::spawn(async move {
            create_mask(&client, &apps, &format!("m{i}"), None).await;
            if i % 3 == 0 {
                tokio::task::yield_now().await;
                delete(
                    &Api::<Mask>::namespaced(client.clone(), &apps),
                    &format!("m{i}"),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually_checked("7 Active and 9 Waiting", Some(&violation), async || {
        let ms = masks_in(&client, apps).await;
        let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
        let waiting = ms
            .iter()
            .filter(|m| m.phase() == MaskPhase::Waiting)
            .count();
        (ms.len() == 16
            && active == 7
            && waiting == 9
            && reservations(&client, vpn).await.len() == 7)
            .then_some(())
    })
    .await;
    // Delete the Active ones concurrently: the waiting ones take over.
    let active: Vec<String> = masks_in(&client, apps)
        .await
        .into_iter()
        .filter(|m| m.phase() == MaskPhase::Active)
        .map(|m| m.name_any())
        .collect();
    let mut tasks = Vec::new();
    for name in active {
        let api = Api::<Mask>::namespaced(client.clone(), apps);
        tasks.push(tokio::spawn(async move { delete(&api, &name).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually_checked(
        "the 9 remaining: 7 Active, 2 Waiting",
        Some(&violation),
        async || {
            let ms = masks_in(&client, apps).await;
            let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
            (ms.len() == 9 && active == 7 && reservations(&client, vpn).await.len() == 7)
                .then_some(())
        },
    )
    .await;
    assert!(
        violation.lock().unwrap().is_none(),
        "{:?}",
        violation.lock().unwrap()
    );
    watch.abort();
    assert_no_leaks(&client, vpn).await;
}

#[tokio::test]
async fn killed_controller_restarts_and_converges_without_leaking_slots() {
    let Some((client, ns)) = setup(&["crash"]).await else {
        return;
    };
    let ns = &ns[0];
    let ctl = Running::start(&client, &[ns]);
    provider("p", 6).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    for i in 0..10 {
        create_mask(&client, ns, &format!("m{i}"), None).await;
    }
    // Kill it mid-run, as soon as some (not necessarily all) Masks are assigned.
    eventually("some Masks Active", async || {
        (masks_in(&client, ns)
            .await
            .iter()
            .any(|m| m.phase() == MaskPhase::Active))
        .then_some(())
    })
    .await;
    ctl.kill();
    // Changes while no controller runs.
    let mapi = Api::<Mask>::namespaced(client.clone(), ns);
    for i in 0..3 {
        delete(&mapi, &format!("m{i}")).await;
    }
    for i in 10..13 {
        create_mask(&client, ns, &format!("m{i}"), None).await;
    }
    let _ctl = Running::start(&client, &[ns]);
    eventually(
        "10 Masks: 6 Active, 4 Waiting, 6 reservations",
        async || {
            let ms = masks_in(&client, ns).await;
            let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
            let waiting = ms
                .iter()
                .filter(|m| m.phase() == MaskPhase::Waiting)
                .count();
            (ms.len() == 10
                && active == 6
                && waiting == 4
                && reservations(&client, ns).await.len() == 6)
                .then_some(())
        },
    )
    .await;
    eventually("deleted Masks' consumers gone", async || {
        let cs = Api::<MaskConsumer>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        (cs.len() == 10).then_some(())
    })
    .await;
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let Some(env) = TestEnv::shared() else { return };
    let ns = env.new_namespace("metrics").await;
    let client = env.client().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = vpno_controller::ControllerArgs {
        namespaces: vec![ns.clone()],
        metrics_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        kubeconfig: Some(env.kubeconfig_path().to_path_buf()),
        verify_gluetun_image: "qmcgaw/gluetun".into(),
        verify_curl_image: "curlimages/curl".into(),
        verify_ip_url: "https://api.ipify.org".into(),
        verify_timeout: Duration::from_secs(60),
        reporter: "vpn-operator-test".into(),
    };
    let task = tokio::spawn(vpno_controller::run(args));
    struct Abort(tokio::task::JoinHandle<Result<(), vpno_controller::ControllerError>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = Abort(task);
    provider("p", 1).create(&client, &ns).await;
    create_mask(&client, &ns, "m", None).await;
    wait_mask_phase(&client, &ns, "m", MaskPhase::Active).await;
    let get = async |path: &str| -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out))
    };
    let (code, _) = eventually("/healthz", async || get("/healthz").await).await;
    assert_eq!(code, 200);
    let (code, _) = eventually("/readyz", async || get("/readyz").await).await;
    assert_eq!(code, 200);
    let (code, body) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for family in [
        "vpno_mask_reconcile_counter_total",
        "vpno_maskconsumer_reconcile_counter_total",
        "vpno_maskconsumer_action_counter_total{action=\"assign\"}",
        "vpno_maskprovider_reconcile_counter_total",
        "vpno_maskreservation_reconcile_counter_total",
        "vpno_maskconsumer_write_duration_seconds_bucket",
        "vpno_maskprovider_read_duration_seconds_bucket",
        "vpno_http_requests_total{path=\"/healthz\",status=\"200\"}",
    ] {
        assert!(
            body.contains(family),
            "missing {family} in /metrics:\n{body}"
        );
    }
    assert!(
        !body.contains("name=\""),
        "object names must not be metric labels"
    );
}
