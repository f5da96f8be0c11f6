//! Integration tests of the Mask API controllers against a real API server
//! (`vpno-testenv`). One test binary, so one control plane serves every test;
//! scenarios live in the modules below. Each test uses its own namespaces and
//! its own controller instance(s), scoped to those namespaces. Tests play the
//! kubelet for verification Pods.

mod assign;
mod edits;
mod fixture;
mod gateway;
mod metrics;
mod provider;
mod release;
mod resilience;
mod takeover;
mod verify;

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

use fixture::World;

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
    /// The Secret's data (default: an OpenVPN-style login).
    data: Option<Vec<(String, String)>>,
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
        data: None,
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
    /// The provider Secret holds `pairs`.
    fn data(mut self, pairs: &[(&str, &str)]) -> Self {
        self.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
    fn without_secret(mut self) -> Self {
        self.create_secret = false;
        self
    }
    async fn create(self, client: &Client, ns: &str) -> MaskProvider {
        if self.create_secret {
            let name = self.name.as_str();
            let default = [("VPN_SERVICE_PROVIDER", name), ("OPENVPN_USER", "user")];
            let given: Vec<(&str, &str)> = self
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let pairs: &[(&str, &str)] = if self.data.is_some() {
                &given
            } else {
                &default
            };
            create_secret(client, ns, &self.spec.secret, pairs).await;
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
