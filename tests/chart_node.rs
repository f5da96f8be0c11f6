//! The chart's node agent (`node.enabled`): the DaemonSet that runs
//! `vpn-operator node` on every node with the node's CNI directories, and
//! its ServiceAccount and ClusterRole — rendered by real Helm through
//! `scripts/helm` (SKIPPED without it, failing under CI=true), and the
//! rendered permissions exercised against the real API server of
//! `vpno_testenv::TestEnv` by the agent's own watch and the plugin's reads.
#![deny(rust_2018_idioms)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

mod chart_common;
use chart_common::*;

const DAEMONSET: &str = "vpn-operator-node";

fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

/// hostPath volume name → (host path, mount path in the container).
fn mounts(ds: &Value) -> BTreeMap<String, (String, String)> {
    let spec = pod_spec(ds);
    let host: BTreeMap<String, String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["hostPath"]["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    container(ds)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_owned();
            (
                name.clone(),
                (
                    host[&name].clone(),
                    m["mountPath"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_node_agent_is_off_by_default() {
    if !helm_available("the_node_agent_is_off_by_default") {
        return;
    }
    let docs = render(&[]);
    assert!(of_kind(&docs, "DaemonSet").is_empty());
    assert!(find(&docs, "ServiceAccount", DAEMONSET).is_none());
    assert!(find(&docs, "ClusterRole", DAEMONSET).is_none());
}

#[test]
fn the_daemonset_runs_the_agent_on_every_node_with_the_cni_directories() {
    if !helm_available("the_daemonset_runs_the_agent_on_every_node_with_the_cni_directories") {
        return;
    }
    let docs = render(&["--set", "node.enabled=true"]);
    let ds = get(&docs, "DaemonSet", DAEMONSET);
    assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
    let spec = pod_spec(ds);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["serviceAccountName"], DAEMONSET);
    assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["securityContext"]["runAsUser"], 0);
    let c = container(ds);
    assert_eq!(args(ds)[0], "node");
    assert_eq!(
        flag(ds, "--cni-conf-dir").as_deref(),
        Some("/etc/cni/net.d")
    );
    assert_eq!(flag(ds, "--cni-bin-dir").as_deref(), Some("/opt/cni/bin"));
    assert_eq!(
        flag(ds, "--cni-data-dir").as_deref(),
        Some("/var/lib/cni/vpno")
    );
    assert_eq!(flag(ds, "--vxlan-port").as_deref(), Some("4789"));
    assert_eq!(
        c["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
    );
    assert_eq!(
        c["securityContext"]["privileged"],
        Value::Null,
        "no privileged mode"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let node_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // Mounted where they are on the host: the conflist entries name these paths for the plugin.
    let m = mounts(ds);
    for (name, path) in [
        ("cni-conf", "/etc/cni/net.d"),
        ("cni-bin", "/opt/cni/bin"),
        ("cni-data", "/var/lib/cni/vpno"),
    ] {
        assert_eq!(m[name], (path.to_string(), path.to_string()), "{name}");
    }
}

#[test]
fn the_cni_directories_are_values() {
    if !helm_available("the_cni_directories_are_values") {
        return;
    }
    let docs = render(&[
        "--set",
        "node.enabled=true,node.cni.confDir=/etc/k3s/cni,node.cni.binDir=/var/lib/rancher/cni/bin,node.vxlanPort=8472",
        "--set-json",
        r#"node.extraArgs=["--resync-seconds","5"]"#,
    ]);
    let ds = get(&docs, "DaemonSet", DAEMONSET);
    assert_eq!(flag(ds, "--cni-conf-dir").as_deref(), Some("/etc/k3s/cni"));
    assert_eq!(
        flag(ds, "--cni-bin-dir").as_deref(),
        Some("/var/lib/rancher/cni/bin")
    );
    assert_eq!(flag(ds, "--vxlan-port").as_deref(), Some("8472"));
    assert_eq!(args(ds)[args(ds).len() - 2..], ["--resync-seconds", "5"]);
    let m = mounts(ds);
    assert_eq!(
        m["cni-conf"],
        ("/etc/k3s/cni".into(), "/etc/k3s/cni".into())
    );
    assert_eq!(
        m["cni-bin"],
        (
            "/var/lib/rancher/cni/bin".into(),
            "/var/lib/rancher/cni/bin".into()
        )
    );
}

#[test]
fn node_values_are_checked_by_the_schema_and_lint() {
    if !helm_available("node_values_are_checked_by_the_schema_and_lint") {
        return;
    }
    let err = try_render(&["--set", "node.cni.confDir=etc/cni"]).expect_err("a relative path");
    assert!(err.contains("/node/cni/confDir"), "{err}");
    let err = try_render(&["--set", "node.cni.confdir=/x"]).expect_err("an unknown key");
    assert!(
        err.contains("additional properties") && err.contains("confdir"),
        "{err}"
    );
    let err = try_render(&["--set", "node.vxlanPort=0"]).expect_err("port 0");
    assert!(err.contains("/node/vxlanPort"), "{err}");
    let out = helm(&["lint", "--strict", "--set", "node.enabled=true"]).expect("lint");
    assert!(out.contains("1 chart(s) linted, no failures"), "{out}");
}

/// The rules of the rendered ClusterRole as (apiGroup, resource) → verbs.
fn rules(role: &Value) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let verbs: Vec<String> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                out.insert(
                    (
                        g.as_str().unwrap().to_owned(),
                        res.as_str().unwrap().to_owned(),
                    ),
                    verbs,
                );
            }
        }
    }
    out
}

#[test]
fn the_node_agent_may_only_read_and_report() {
    if !helm_available("the_node_agent_may_only_read_and_report") {
        return;
    }
    let docs = render(&["--set", "node.enabled=true"]);
    let got = rules(get(&docs, "ClusterRole", DAEMONSET));
    let read = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let want = BTreeMap::from([
        (
            ("".to_string(), "nodes".to_string()),
            read(&["get", "list", "watch"]),
        ),
        (
            ("vpn.beebs.dev".to_string(), "maskgateways".to_string()),
            read(&["get", "list", "watch"]),
        ),
        (("".to_string(), "pods".to_string()), read(&["get"])),
        (("".to_string(), "namespaces".to_string()), read(&["get"])),
        (
            ("events.k8s.io".to_string(), "events".to_string()),
            read(&["create", "patch"]),
        ),
    ]);
    assert_eq!(got, want);
    let binding = get(&docs, "ClusterRoleBinding", DAEMONSET);
    assert_eq!(binding["roleRef"]["name"], DAEMONSET);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": DAEMONSET, "namespace": NAMESPACE}])
    );
    let docs = render(&["--set", "node.enabled=true,rbac.create=false"]);
    assert!(find(&docs, "ClusterRole", DAEMONSET).is_none());
    get(&docs, "ServiceAccount", DAEMONSET);
}

/// The rendered permissions suffice: the agent's cluster watch and the
/// plugin's pod and namespace reads work as the chart's ServiceAccount, so do
/// its Events, and nothing else does (a pod delete is forbidden).
#[tokio::test]
async fn the_rendered_permissions_suffice_against_a_real_api_server() {
    use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Api, PostParams};
    use vpno_node::ClusterSource as _;

    if !helm_available("the_rendered_permissions_suffice_against_a_real_api_server") {
        return;
    }
    let Some(env) = vpno_testenv::TestEnv::shared() else {
        return;
    };
    let admin = env.client().await;
    let ns = env.new_namespace("chart-node").await;
    let release = format!("n{}", std::process::id() % 100000);
    let text = helm(&[
        "template",
        &release,
        "--namespace",
        &ns,
        "--set",
        "node.enabled=true",
        "--show-only",
        "templates/node-rbac.yaml",
    ])
    .expect("render");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let name = format!("{release}-vpn-operator-node");
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(get(&docs, "ServiceAccount", &name).clone()).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&pp, &sa)
        .await
        .unwrap();
    let role: ClusterRole =
        serde_json::from_value(get(&docs, "ClusterRole", &name).clone()).unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding =
        serde_json::from_value(get(&docs, "ClusterRoleBinding", &name).clone()).unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &binding)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), &ns)
        .create(&pp, &pod)
        .await
        .unwrap();

    let mut config = env.config();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    let agent = kube::Client::try_from(config).unwrap();
    // RBAC bindings take effect at once, but allow the authorizer's cache a few tries.
    let mut watch = None;
    for _ in 0..50 {
        if Api::<Pod>::namespaced(agent.clone(), &ns)
            .get("client")
            .await
            .is_ok()
        {
            watch = Some(vpno_node::ClusterWatch::new(agent.clone()));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut watch = watch.expect("the node agent's ServiceAccount could never read a pod");
    let picture = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
        .await
        .expect("the cluster watch (nodes + maskgateways) lists within 30 s")
        .unwrap();
    assert!(picture.unusable.is_empty());
    Api::<Namespace>::all(agent.clone())
        .get(&ns)
        .await
        .expect("namespace get");
    // Its Warning Events on a MaskGateway land.
    use vpno_node::NoticeSink as _;
    vpno_node::KubeEvents::new(agent.clone(), "node-1")
        .publish(&vpno_node::Notice {
            namespace: ns.clone(),
            name: "egress".into(),
            uid: "0000-test".into(),
            reason: vpno_node::notices::REASON_FAILED,
            note: "node node-1: test".into(),
        })
        .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &ns);
    let listed = events.list(&Default::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NodeNetworkFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("egress")),
        "the node agent's Event was not recorded: {:?}",
        listed.items
    );
    let forbidden = Api::<Pod>::namespaced(agent.clone(), &ns)
        .delete("client", &Default::default())
        .await;
    assert!(
        matches!(forbidden, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{forbidden:?}"
    );
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    Api::<ClusterRole>::all(admin)
        .delete(&name, &Default::default())
        .await
        .unwrap();
}
