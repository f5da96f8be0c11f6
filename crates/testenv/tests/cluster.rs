//! Tests against the real single-node cluster: Pods run. One test binary =
//! one cluster (`Cluster::shared()`); every test works in its own namespace.
//! Skips without root, binaries or packages (fails under CI=true).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use vpno_testenv::Cluster;
use vpno_testenv::cluster::{BUSYBOX_IMAGE, TESTBOX_IMAGE};

/// A Pod of one container running `command` in a local image.
fn pod(name: &str, image: &str, command: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "command": command,
            }],
        },
    }))
    .expect("valid Pod")
}

/// Creates the Pod and waits until it runs; returns it and how long that took.
async fn run_pod(api: &Api<Pod>, pod: &Pod) -> (Pod, Duration) {
    let begun = Instant::now();
    let name = pod.name_any();
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    let deadline = begun + Duration::from_secs(90);
    loop {
        let live = api.get(&name).await.expect("reading the pod");
        let status = live.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Running") && status.pod_ip.is_some() {
            return (live, begun.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not run within 90 s: {:?}",
            live.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl exec` in a Pod's container; returns (success, stdout+stderr).
fn exec(cluster: &Cluster, ns: &str, pod: &str, script: &str) -> (bool, String) {
    let out = cluster
        .kubectl_command()
        .args(["-n", ns, "exec", pod, "--", "sh", "-c", script])
        .output()
        .expect("running kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ip_of(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

#[tokio::test]
async fn a_pod_runs_and_kubectl_exec_works() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    eprintln!(
        "cluster start-up (up to node Ready): {:?}",
        cluster.startup_duration()
    );
    let ns = cluster.new_namespace("pod-runs").await;
    let api: Api<Pod> = Api::namespaced(cluster.client().await, &ns);
    let (live, took) = run_pod(&api, &pod("sleeper", BUSYBOX_IMAGE, &["sleep", "3600"])).await;
    eprintln!("pod create to Running: {took:?}");
    assert_eq!(
        live.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(cluster.node_name())
    );
    let (ok, out) = exec(cluster, &ns, "sleeper", "echo hello from $(hostname)");
    assert!(ok, "kubectl exec failed: {out}");
    assert_eq!(out.trim(), "hello from sleeper");
    // The service-account token volume is mounted and the API server's
    // Service variables are set.
    let (ok, out) = exec(
        cluster,
        &ns,
        "sleeper",
        "test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo $KUBERNETES_SERVICE_HOST",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "10.96.0.1");
}

#[tokio::test]
async fn two_pods_reach_each_other() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let ns = cluster.new_namespace("pod-to-pod").await;
    let api: Api<Pod> = Api::namespaced(cluster.client().await, &ns);
    let (server, _) = run_pod(&api, &pod("server", TESTBOX_IMAGE, &["ip-echo", "8080"])).await;
    let (client, _) = run_pod(&api, &pod("client", TESTBOX_IMAGE, &["sleep", "3600"])).await;
    let server_ip = ip_of(&server);
    let (ok, out) = exec(
        cluster,
        &ns,
        "client",
        &format!("ping -c 1 -W 5 {server_ip}"),
    );
    assert!(ok, "ping {server_ip} failed: {out}");
    // The echo server sees the client's own pod IP (no NAT on the bridge).
    let (ok, out) = exec(
        cluster,
        &ns,
        "client",
        &format!("curl --max-time 5 http://{server_ip}:8080/cgi-bin/ip"),
    );
    assert!(ok, "HTTP to {server_ip} failed: {out}");
    assert_eq!(out.trim(), ip_of(&client));
}

#[tokio::test]
async fn a_cluster_ip_service_reaches_its_pod() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let ns = cluster.new_namespace("service").await;
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    run_pod(&pods, &pod("echo", TESTBOX_IMAGE, &["ip-echo", "8080"])).await;
    let (caller, _) = run_pod(&pods, &pod("caller", TESTBOX_IMAGE, &["sleep", "3600"])).await;
    let services: Api<Service> = Api::namespaced(client, &ns);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    assert!(cluster_ip.starts_with("10."), "{cluster_ip}");
    // kube-proxy programs the rules asynchronously: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = exec(
            cluster,
            &ns,
            "caller",
            &format!("curl --max-time 3 http://{cluster_ip}/cgi-bin/ip"),
        );
        if ok {
            assert_eq!(out.trim(), ip_of(&caller), "the Service answered: {out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Service {cluster_ip} never answered: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn owner_reference_gc_deletes_a_pod() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let ns = cluster.new_namespace("gc").await;
    let client = cluster.client().await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".into());
    let owner = owners.create(&PostParams::default(), &owner).await.unwrap();
    let mut owned = pod("owned", BUSYBOX_IMAGE, &["sleep", "3600"]);
    owned.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    run_pod(&pods, &owned).await;
    let begun = Instant::now();
    owners
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = begun + Duration::from_secs(120);
    while pods.get_opt("owned").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the owned pod outlived its owner by 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("owner deleted to owned pod gone: {:?}", begun.elapsed());
}

#[tokio::test]
async fn pods_cannot_reach_off_the_machine() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let ns = cluster.new_namespace("contained").await;
    let api: Api<Pod> = Api::namespaced(cluster.client().await, &ns);
    run_pod(&api, &pod("inmate", TESTBOX_IMAGE, &["sleep", "3600"])).await;
    let (ok, routes) = exec(cluster, &ns, "inmate", "ip route");
    assert!(ok, "{routes}");
    assert!(
        !routes.contains("default"),
        "a pod has a default route: {routes}"
    );
    assert!(routes.contains("10.96.0.0/12 via 10.244.0.1"), "{routes}");
    let (ok, out) = exec(cluster, &ns, "inmate", "nc -w 2 192.0.2.1 80 </dev/null");
    assert!(!ok, "a pod reached 192.0.2.1: {out}");
    let (ok, out) = exec(cluster, &ns, "inmate", "cat /etc/resolv.conf");
    assert!(ok, "{out}");
    assert!(out.contains("nameserver 127.0.0.1"), "{out}");

    let forward = std::process::Command::new("iptables")
        .args(["-t", "filter", "-S", "FORWARD"])
        .output()
        .expect("iptables");
    let forward = String::from_utf8_lossy(&forward.stdout);
    let first = forward.lines().find(|l| l.starts_with("-A FORWARD"));
    assert_eq!(
        first,
        Some(format!("-A FORWARD -j {}", cluster.guard_chain()).as_str()),
        "the guard is not FORWARD's first rule:\n{forward}"
    );
    let guard = std::process::Command::new("iptables")
        .args(["-t", "filter", "-S", cluster.guard_chain()])
        .output()
        .expect("iptables");
    let guard = String::from_utf8_lossy(&guard.stdout);
    assert!(guard.contains("-i cni+ ! -o cni+ -j DROP"), "{guard}");
    assert!(guard.contains("! -i cni+ -o cni+ -j DROP"), "{guard}");
}
