//! End to end in a real single-node cluster (`vpno_testenv::Cluster`): the
//! operator image is built from this very binary with `scripts/image`,
//! imported, and installed with the Helm chart (`scripts/helm`, real Helm
//! code); then the Mask API is driven with real Pods, and it is uninstalled.
//!
//! One test runs the scenarios side by side, each in its own namespaces,
//! then schemathesis against the in-cluster API (`vpno_testenv::schemathesis`),
//! between install and uninstall (which must come last). Figures (cluster
//! start, install → controller Ready, Mask → credentials Secret) are printed.
//! Skips without root, binaries or packages; fails under CI=true.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use vpno_api::{
    Mask, MaskConsumer, MaskPhase, MaskProvider, MaskProviderSpec, MaskReservation, MaskSpec,
    ProviderPhase, VerifySpec,
};
use vpno_testenv::Cluster;
use vpno_testenv::cluster::{BUSYBOX_IMAGE, TESTBOX_IMAGE};

const OPERATOR_IMAGE: &str = "localhost/vpn-operator:dev";
const OPERATOR_NS: &str = "vpn-operator";
const RELEASE: &str = "vpn-operator";
const API_TOKEN: &str = "e2e-api-token";
const SA_USER: &str = "system:serviceaccount:vpn-operator:vpn-operator";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `check` every 250 ms until it holds; panics after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let begun = Instant::now();
    while !check().await {
        assert!(
            begun.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    begun.elapsed()
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster
        .kubectl_command()
        .args(args)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `localhost/vpn-operator:dev` from the binary under test and imports it.
fn build_and_import_operator_image(cluster: &Cluster) -> PathBuf {
    let out = cluster.dir().join("e2e-images");
    let status = std::process::Command::new(root().join("scripts/image"))
        .arg("--out")
        .arg(&out)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_vpn-operator"))
        .arg("vpn-operator")
        .status()
        .expect("running scripts/image");
    assert!(status.success(), "scripts/image failed");
    let tar = out.join("vpn-operator.tar");
    cluster
        .import_image(&tar)
        .expect("importing the operator image");
    tar
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone())
}

/// Runs a Pod and a Service answering `/cgi-bin/ip` with the caller's IP
/// (the verification Pods' "what is my public IP" service); returns its URL.
async fn start_ip_echo(cluster: &Cluster) -> String {
    let ns = cluster.new_namespace("e2e-echo").await;
    let client = cluster.client().await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo", "labels": {"app": "echo"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "echo", "image": TESTBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["ip-echo", "8080"]}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(client, &ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    eventually(
        "the IP echo Pod to run",
        Duration::from_secs(90),
        || async { pods.get("echo").await.is_ok_and(|p| pod_ready(&p)) },
    )
    .await;
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("ClusterIP");
    format!("http://{ip}/cgi-bin/ip")
}

/// `scripts/helm ARGS… --kubeconfig <the cluster's>`.
fn helm(cluster: &Cluster, args: &[&str]) {
    let out = std::process::Command::new(root().join("scripts/helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .output()
        .expect("running scripts/helm");
    assert!(
        out.status.success(),
        "scripts/helm {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs the chart (the local image, never pulled; verification Pods ask
/// the in-cluster IP echo); returns install → controller Pod Ready.
async fn install(cluster: &Cluster, ip_url: &str) -> Duration {
    let begun = Instant::now();
    helm(
        cluster,
        &[
            "install",
            RELEASE,
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            &format!("image={OPERATOR_IMAGE}"),
            "--set",
            "imagePullPolicy=Never",
            "--set-string",
            &format!("controller.verify.ipUrl={ip_url}"),
            "--set",
            "api.enabled=true",
            "--set-json",
            &format!(r#"api.tokens.values=["{API_TOKEN}"]"#),
        ],
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, OPERATOR_NS);
    let selector = ListParams::default().labels("app.kubernetes.io/component=controller");
    eventually(
        "the controller Pod to be Ready",
        Duration::from_secs(180),
        || async {
            pods.list(&selector)
                .await
                .is_ok_and(|l| l.items.iter().any(pod_ready))
        },
    )
    .await;
    begun.elapsed()
}

async fn controller_pod(cluster: &Cluster) -> Pod {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, OPERATOR_NS);
    let selector = ListParams::default().labels("app.kubernetes.io/component=controller");
    let list = pods.list(&selector).await.unwrap();
    list.items
        .into_iter()
        .find(pod_ready)
        .expect("a Ready controller Pod")
}

/// The controller runs as its own ServiceAccount, whose RBAC grants what it
/// uses and not more (spot checks with `kubectl auth can-i --as`).
async fn scenario_controller_identity(cluster: &Cluster) {
    let pod = controller_pod(cluster).await;
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("vpn-operator"));
    assert_eq!(spec.containers[0].image.as_deref(), Some(OPERATOR_IMAGE));
    let can = |verb: &str, resource: &str| {
        let out = cluster
            .kubectl_command()
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--all-namespaces",
                "--as",
                SA_USER,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("watch", "maskproviders.vpn.beebs.dev"));
    assert!(can("create", "pods"));
    // Nodes are read (a MaskGateway gives each node a slice of its network), never changed.
    assert!(can("list", "nodes"));
    assert!(!can("update", "nodes"), "the controller may update nodes");
    assert!(!can("delete", "nodes"), "the controller may delete nodes");
    assert!(
        !can("create", "clusterroles"),
        "the controller may create ClusterRoles"
    );
}

fn credentials(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.string_data = Some(BTreeMap::from([
        ("VPN_SERVICE_PROVIDER".to_string(), "custom".to_string()),
        (
            "WIREGUARD_PRIVATE_KEY".to_string(),
            "e2e-not-a-key".to_string(),
        ),
    ]));
    s
}

fn provider(name: &str, max_slots: u32, verify: VerifySpec) -> MaskProvider {
    MaskProvider::new(
        name,
        MaskProviderSpec {
            secret: format!("{name}-creds"),
            max_slots,
            tags: Some(vec![name.to_string()]),
            verify: Some(verify),
            ..Default::default()
        },
    )
}

/// A Mask gets a slot and its credentials Secret; a Pod owned by the
/// MaskConsumer mounts it and runs; deleting the Mask frees the slot only
/// once that Pod is really gone. Returns Mask → Secret.
async fn scenario_mask_lifecycle(cluster: &Cluster) -> Duration {
    let client = cluster.client().await;
    let providers_ns = cluster.new_namespace("e2e-providers").await;
    let masks_ns = cluster.new_namespace("e2e-masks").await;
    Api::<Secret>::namespaced(client.clone(), &providers_ns)
        .create(&PostParams::default(), &credentials("acct-creds"))
        .await
        .unwrap();
    let providers: Api<MaskProvider> = Api::namespaced(client.clone(), &providers_ns);
    let skip = VerifySpec {
        skip: Some(true),
        ..Default::default()
    };
    providers
        .create(&PostParams::default(), &provider("acct", 1, skip))
        .await
        .unwrap();

    let masks: Api<Mask> = Api::namespaced(client.clone(), &masks_ns);
    let consumers: Api<MaskConsumer> = Api::namespaced(client.clone(), &masks_ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &masks_ns);
    let begun = Instant::now();
    let spec = MaskSpec {
        providers: Some(vec!["acct".into()]),
    };
    masks
        .create(&PostParams::default(), &Mask::new("m", spec))
        .await
        .unwrap();
    let secret_name = loop {
        let assigned = consumers
            .get_opt("m")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.assignment().map(|a| a.secret.clone()));
        if let Some(name) = assigned
            && secrets.get_opt(&name).await.is_ok_and(|s| s.is_some())
        {
            break name;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(120),
            "no credentials Secret within 120 s of creating the Mask"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mask_to_secret = begun.elapsed();
    let copy = secrets.get(&secret_name).await.unwrap();
    assert!(copy.data.unwrap().contains_key("WIREGUARD_PRIVATE_KEY"));
    eventually("the Mask to be Active", Duration::from_secs(60), || async {
        masks
            .get("m")
            .await
            .is_ok_and(|m| m.phase() == MaskPhase::Active)
    })
    .await;

    // A workload Pod owned by the consumer, using the credentials, that
    // takes its whole grace period to stop (it ignores SIGTERM).
    let consumer = consumers.get("m").await.unwrap();
    let owner = consumer.controller_owner_ref(&()).unwrap();
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker"},
        "spec": {
            "terminationGracePeriodSeconds": 8,
            "volumes": [{"name": "creds", "secret": {"secretName": secret_name}}],
            "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap '' TERM; test -s /creds/WIREGUARD_PRIVATE_KEY && while true; do sleep 1; done"],
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}],
            }],
        },
    }))
    .unwrap();
    pod.metadata.owner_references = Some(vec![owner]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &masks_ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the worker Pod to run", Duration::from_secs(90), || async {
        pods.get("worker").await.is_ok_and(|p| pod_ready(&p))
    })
    .await;

    let reservations: Api<MaskReservation> = Api::namespaced(client.clone(), &providers_ns);
    let held = || async {
        reservations
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(held().await, 1);
    masks
        .delete("m", &DeleteParams::background())
        .await
        .unwrap();
    let released = Instant::now();
    let mut seen_terminating_while_held = false;
    loop {
        let pod = pods.get_opt("worker").await.unwrap();
        let slots = held().await;
        if slots == 0 {
            assert!(
                pod.is_none(),
                "the slot was freed while its Pod still exists"
            );
            break;
        }
        if pod
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
        {
            seen_terminating_while_held = true;
        }
        assert!(
            released.elapsed() < Duration::from_secs(180),
            "the slot was not freed within 180 s of deleting the Mask"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen_terminating_while_held,
        "the Pod was never seen terminating while the slot was held"
    );
    eprintln!(
        "Mask deleted to slot free (Pod gone first): {:?}",
        released.elapsed()
    );
    delete_provider(&providers, "acct").await;
    mask_to_secret
}

async fn delete_provider(providers: &Api<MaskProvider>, name: &str) {
    providers
        .delete(name, &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        &format!("provider {name} to be finalized"),
        Duration::from_secs(120),
        || async { providers.get_opt(name).await.is_ok_and(|p| p.is_none()) },
    )
    .await;
}

/// `/metrics` of the controller, fetched from its Pod IP.
async fn scenario_metrics(cluster: &Cluster) {
    let pod = controller_pod(cluster).await;
    let ip = pod_ip(&pod).expect("controller Pod IP");
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let body = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: controller\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
    let families: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|f| f.starts_with("vpno_"))
        .collect();
    // Families show once they have a sample: by now every controller has reconciled.
    for prefix in [
        "vpno_mask_",
        "vpno_maskconsumer_",
        "vpno_maskprovider_",
        "vpno_http_",
    ] {
        assert!(
            families.iter().any(|f| f.starts_with(prefix)),
            "no {prefix}* metric family:\n{body}"
        );
    }
    eprintln!("controller /metrics families: {families:?}");
}

/// Overrides of the verification Pod's containers: local images, and a
/// `vpn` container that stands in for gluetun. `changes_ip`: it gives the Pod
/// a second address and sends Service traffic from it (so the echo sees a
/// new "public" IP, as through a tunnel); otherwise it only sleeps.
fn verify_overrides(changes_ip: bool) -> serde_json::Value {
    let vpn = if changes_ip {
        "ip addr add 10.244.0.250/24 dev eth0 && \
         ip route replace 10.96.0.0/12 via 10.244.0.1 dev eth0 src 10.244.0.250 && \
         exec sleep 3600"
    } else {
        "exec sleep 3600"
    };
    let local = json!({"image": TESTBOX_IMAGE, "imagePullPolicy": "Never"});
    json!({
        "pod": {"spec": {"terminationGracePeriodSeconds": 1}},
        "containers": {
            "init": local,
            "probe": local,
            "vpn": {"image": TESTBOX_IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", vpn]},
        },
    })
}

/// A verification Pod really runs: when the probe sees a new IP the provider
/// becomes Ready; when it never does, ErrVerifyFailed.
async fn scenario_verification(cluster: &Cluster) {
    let client = cluster.client().await;
    let ns = cluster.new_namespace("e2e-verify").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let providers: Api<MaskProvider> = Api::namespaced(client.clone(), &ns);
    for (name, changes_ip) in [("tunnel", true), ("leaky", false)] {
        secrets
            .create(
                &PostParams::default(),
                &credentials(&format!("{name}-creds")),
            )
            .await
            .unwrap();
        let verify = VerifySpec {
            skip: Some(false),
            timeout: Some("30s".into()),
            overrides: Some(serde_json::from_value(verify_overrides(changes_ip)).unwrap()),
            ..Default::default()
        };
        providers
            .create(&PostParams::default(), &provider(name, 2, verify))
            .await
            .unwrap();
    }
    let begun = Instant::now();
    let phase = |name: &'static str| {
        let providers = providers.clone();
        async move {
            providers
                .get(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
        }
    };
    let ready = eventually(
        "provider tunnel to verify and be Ready",
        Duration::from_secs(150),
        || async {
            matches!(
                phase("tunnel").await,
                Some(ProviderPhase::Ready | ProviderPhase::Active)
            )
        },
    )
    .await;
    eprintln!("verification (IP changed) to provider Ready: {ready:?}");
    eventually(
        "provider leaky to fail verification",
        Duration::from_secs(150),
        || async { phase("leaky").await == Some(ProviderPhase::ErrVerifyFailed) },
    )
    .await;
    let leaky = providers.get("leaky").await.unwrap();
    eprintln!(
        "verification (IP unchanged) to ErrVerifyFailed: {:?}; message: {:?}",
        begun.elapsed(),
        leaky.status.and_then(|s| s.message)
    );
    delete_provider(&providers, "tunnel").await;
    delete_provider(&providers, "leaky").await;
}

/// Whether a TCP connection to `addr` from the host succeeds.
async fn accepts(addr: SocketAddr) -> bool {
    tokio::task::spawn_blocking(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
    .await
    .unwrap()
}

/// One HTTP/1.0 request from the host; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let request = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.0\r\nHost: api\r\nAuthorization: Bearer {API_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!(
            "{method} {path} HTTP/1.0\r\nHost: api\r\nAuthorization: Bearer {API_TOKEN}\r\n\r\n"
        ),
    };
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .unwrap()
}

/// The API Service's address (ClusterIP, port 8080).
async fn api_addr(cluster: &Cluster) -> SocketAddr {
    let svc = Api::<Service>::namespaced(cluster.client().await, OPERATOR_NS)
        .get(&format!("{RELEASE}-api"))
        .await
        .expect("the API Service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("ClusterIP");
    format!("{ip}:8080").parse().unwrap()
}

/// The proxy API serves `/health` through its Service, and a proxy whose
/// image cannot run here reports the kubelet's reason — never a silent
/// "pending".
async fn scenario_proxy_api(cluster: &Cluster) {
    let client = cluster.client().await;
    let addr = api_addr(cluster).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let api_pods = ListParams::default().labels("app.kubernetes.io/component=api");
    eventually(
        "the API Pod to be Ready",
        Duration::from_secs(120),
        || async {
            pods.list(&api_pods)
                .await
                .is_ok_and(|l| l.items.iter().any(pod_ready))
        },
    )
    .await;
    // kube-proxy programs the Service's endpoint a moment after the Pod is
    // Ready; until then connections are refused.
    eventually(
        "the API Service to accept connections",
        Duration::from_secs(60),
        || async { accepts(addr).await },
    )
    .await;
    let (status, body) = http(addr, "GET", "/health", None).await;
    assert_eq!(status, 200, "GET /health through the Service: {body}");

    // A slot for the proxy: a provider tagged like the catalog's provider.
    let ns = cluster.new_namespace("e2e-api-providers").await;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &credentials("mullvad-creds"))
        .await
        .unwrap();
    let providers: Api<MaskProvider> = Api::namespaced(client.clone(), &ns);
    let skip = VerifySpec {
        skip: Some(true),
        ..Default::default()
    };
    providers
        .create(&PostParams::default(), &provider("mullvad", 1, skip))
        .await
        .unwrap();
    let (status, body) = http(addr, "POST", "/proxies", Some(r#"{"provider":"mullvad"}"#)).await;
    assert_eq!(status, 201, "POST /proxies: {body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_str().expect("proxy id").to_string();
    // gluetun's image is not here and no registry is reachable: the kubelet
    // reports an image pull error, which the API must pass on.
    let begun = Instant::now();
    let last = loop {
        let (status, body) = http(addr, "GET", &format!("/proxies/{id}"), None).await;
        assert_eq!(status, 200, "GET /proxies/{id}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let state = v["state"].as_str().unwrap_or_default().to_string();
        let message = v["message"].as_str().unwrap_or_default().to_string();
        let told = matches!(state.as_str(), "failed" | "starting")
            && ["ErrImagePull", "ImagePullBackOff", "pull"]
                .iter()
                .any(|r| message.contains(r));
        if told {
            break format!("{state}: {message}");
        }
        assert!(
            begun.elapsed() < Duration::from_secs(120),
            "after 120 s GET /proxies/{id} still does not give the kubelet's reason: {state}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let waited = begun.elapsed();
    eprintln!("proxy with an unavailable image reported in {waited:?}: {last}");
    let (status, body) = http(addr, "DELETE", &format!("/proxies/{id}"), None).await;
    assert!(
        matches!(status, 200 | 202 | 204),
        "DELETE /proxies/{id}: {status} {body}"
    );
    let masks: Api<Mask> = Api::namespaced(client.clone(), OPERATOR_NS);
    eventually(
        "the proxy's Mask to be gone",
        Duration::from_secs(180),
        || async { masks.get_opt(&id).await.is_ok_and(|m| m.is_none()) },
    )
    .await;
    delete_provider(&providers, "mullvad").await;
}

/// Generated requests per API operation and phase in-cluster: fewer than
/// the in-process test's 40, to keep the e2e binary within a few minutes.
const SCHEMATHESIS_MAX_EXAMPLES: u32 = 15;
/// Without the coverage phase, which is not bounded by `--max-examples`
/// and, with the chart's full catalog as `enum`s, did not finish in 300 s.
const SCHEMATHESIS_PHASES: &[&str] = &[
    "--phases",
    "examples,fuzzing,stateful",
    // Every warning but `missing_test_data` and `low_valid_rate`: the alias
    // `POST /destroy/{id}` gets no real id from a link here (its proxies get no slot in this
    // scenario), and fuzzed `DELETE /proxies/{id}` calls mostly carry random ids, so
    // schemathesis sees 404s and warns (how many depends on the order two workers run in) —
    // a gap in its test data, not in the API. The in-process run
    // (crates/server/tests/schemathesis.rs) keeps every warning.
    "--warnings",
    "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,unused_openapi_auth,\
unsupported_regex,method_not_allowed,constants_extraction,unmatched_filter,unresolvable_reference,\
rate_limited,dictionary_mismatch,timeout_units",
];
/// Operations of the API's document: 4 meta and catalog, 4 proxies, 5 aliases.
const API_OPERATIONS: usize = 13;

/// The in-cluster API keeps the promises of its own `/openapi.json`
/// (`vpno_testenv::schemathesis`, from the host through the Service, with
/// the chart's token). Runs after the other scenarios deleted their
/// providers, so its proxies get no slot and take none from them; then
/// deletes every proxy it left and waits for their Masks and consumers to go.
async fn scenario_api_schemathesis(cluster: &Cluster) {
    let client = cluster.client().await;
    let addr = api_addr(cluster).await;
    let begun = Instant::now();
    let run = vpno_testenv::schemathesis::Run {
        base_url: format!("http://{addr}"),
        token: API_TOKEN,
        max_examples: SCHEMATHESIS_MAX_EXAMPLES,
        deadline: Duration::from_secs(300),
        selection: SCHEMATHESIS_PHASES,
        operations: API_OPERATIONS,
    };
    let report = run.check().await;
    eprintln!(
        "schemathesis against the in-cluster API ({} examples per operation and phase): {:?}",
        SCHEMATHESIS_MAX_EXAMPLES,
        begun.elapsed()
    );
    if let Some(report) = report {
        let summary: Vec<&str> = report.lines().rev().take(12).collect();
        eprintln!(
            "{}",
            summary.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let (status, body) = http(addr, "GET", "/proxies", None).await;
    assert_eq!(status, 200, "GET /proxies: {body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<String> = proxy_ids(&listed);
    for id in &ids {
        let (status, body) = http(addr, "DELETE", &format!("/proxies/{id}"), None).await;
        assert!(
            matches!(status, 200 | 202 | 204 | 404),
            "DELETE /proxies/{id}: {status} {body}"
        );
    }
    let masks: Api<Mask> = Api::namespaced(client.clone(), OPERATOR_NS);
    let consumers: Api<MaskConsumer> = Api::namespaced(client, OPERATOR_NS);
    let gone = eventually(
        "the schemathesis proxies' Masks and consumers to be gone",
        Duration::from_secs(180),
        || async {
            let lp = ListParams::default();
            masks.list(&lp).await.is_ok_and(|l| l.items.is_empty())
                && consumers.list(&lp).await.is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    eprintln!(
        "{} proxies left by schemathesis deleted in {gone:?}",
        ids.len()
    );
}

/// The ids in a `GET /proxies` answer (`{"total": n, "proxies": [...]}`).
fn proxy_ids(listed: &serde_json::Value) -> Vec<String> {
    let items = listed["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /proxies has no proxies list: {listed}"));
    items
        .iter()
        .map(|p| p["id"].as_str().expect("proxy id").to_string())
        .collect()
}

/// `helm uninstall` leaves nothing of ours but the CRDs (and the namespace
/// `--create-namespace` made, which Helm never deletes: only what Kubernetes
/// itself puts into every namespace is left in it).
async fn uninstall(cluster: &Cluster) {
    let begun = Instant::now();
    helm(
        cluster,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            OPERATOR_NS,
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    let client = cluster.client().await;
    let ours = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    eventually(
        "the release's Pods to be gone",
        Duration::from_secs(180),
        || async {
            Api::<Pod>::all(client.clone())
                .list(&ours)
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    let none = |n: usize, what: &str| assert_eq!(n, 0, "{what} left after uninstall");
    none(
        Api::<ClusterRole>::all(client.clone())
            .list(&ours)
            .await
            .unwrap()
            .items
            .len(),
        "ClusterRoles",
    );
    none(
        Api::<ClusterRoleBinding>::all(client.clone())
            .list(&ours)
            .await
            .unwrap()
            .items
            .len(),
        "ClusterRoleBindings",
    );
    none(
        Api::<Deployment>::all(client.clone())
            .list(&ours)
            .await
            .unwrap()
            .items
            .len(),
        "Deployments",
    );
    none(
        Api::<Service>::all(client.clone())
            .list(&ours)
            .await
            .unwrap()
            .items
            .len(),
        "Services",
    );
    none(
        Api::<Secret>::all(client.clone())
            .list(&ours)
            .await
            .unwrap()
            .items
            .len(),
        "Secrets",
    );
    let left = kubectl(
        cluster,
        &[
            "-n",
            OPERATOR_NS,
            "get",
            "all,serviceaccounts,secrets,configmaps,roles,rolebindings",
            "-o",
            "name",
        ],
    );
    for name in left.lines() {
        let default = name == "serviceaccount/default"
            || name.starts_with("secret/default-token-")
            || name == "configmap/kube-root-ca.crt";
        assert!(
            default,
            "{name} left in namespace {OPERATOR_NS} after uninstall:\n{left}"
        );
    }
    // The scenarios deleted their providers; the controller's own objects
    // (consumers, reservations, verification Pods) went with them.
    none(
        Api::<MaskConsumer>::all(client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        "MaskConsumers",
    );
    none(
        Api::<MaskReservation>::all(client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        "MaskReservations",
    );
    let verify_pods = ListParams::default().labels("vpn.beebs.dev/verify-provider");
    none(
        Api::<Pod>::all(client.clone())
            .list(&verify_pods)
            .await
            .unwrap()
            .items
            .len(),
        "verification Pods",
    );
    let crds = kubectl(cluster, &["get", "crds", "-o", "name"]);
    for crd in [
        "masks",
        "maskconsumers",
        "maskproviders",
        "maskreservations",
    ] {
        assert!(
            crds.contains(&format!("{crd}.vpn.beebs.dev")),
            "CRD {crd} is gone: {crds}"
        );
    }
    eprintln!(
        "helm uninstall to nothing of ours left: {:?}",
        begun.elapsed()
    );
    Api::<Namespace>::all(client)
        .delete(OPERATOR_NS, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_operator_installs_and_works_in_a_real_cluster() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    eprintln!(
        "cluster start-up (up to node Ready): {:?}",
        cluster.startup_duration()
    );
    let begun = Instant::now();
    build_and_import_operator_image(cluster);
    eprintln!("operator image build + import: {:?}", begun.elapsed());
    let ip_url = start_ip_echo(cluster).await;
    let to_ready = install(cluster, &ip_url).await;
    eprintln!("helm install to controller Ready: {to_ready:?}");

    let ((), mask_to_secret, (), ()) = tokio::join!(
        scenario_controller_identity(cluster),
        scenario_mask_lifecycle(cluster),
        scenario_verification(cluster),
        scenario_proxy_api(cluster),
    );
    eprintln!("Mask created to credentials Secret: {mask_to_secret:?}");
    scenario_api_schemathesis(cluster).await;
    scenario_metrics(cluster).await;
    uninstall(cluster).await;
}
