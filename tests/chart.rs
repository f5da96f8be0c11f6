//! The Helm chart `deploy/chart/vpn-operator`, rendered, linted and
//! installed by real Helm (Helm v4's engine through `scripts/helm`, which
//! wraps PyPI's helm-python-sdk; `scripts/setup` installs it).
//!
//! Without python3 or the SDK the tests print `SKIPPED:` and return; with
//! `CI=true` they fail instead.
#![deny(rust_2018_idioms)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

mod chart_common;
use chart_common::*;

#[test]
fn defaults_render_the_controller_only() {
    if !helm_available("defaults_render_the_controller_only") {
        return;
    }
    let docs = render(&[]);
    let deployment = get(&docs, "Deployment", "vpn-operator-controller");
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    let c = container(deployment);
    assert_eq!(c["image"], "localhost/vpn-operator:dev");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(args(deployment)[0], "controller");
    assert_eq!(
        flag(deployment, "--metrics-addr").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        flag(deployment, "--namespace"),
        None,
        "cluster-wide by default"
    );
    assert_eq!(
        c["ports"][0],
        json!({"name": "metrics", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["serviceAccountName"], "vpn-operator");
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect();
    assert_eq!(env["VPNO_LOG_FORMAT"], "json");
    assert_eq!(env["RUST_LOG"], "info");

    let sa = get(&docs, "ServiceAccount", "vpn-operator");
    assert_eq!(sa["metadata"]["namespace"], NAMESPACE);
    let binding = get(&docs, "ClusterRoleBinding", "vpn-operator-controller");
    assert_eq!(binding["roleRef"]["name"], "vpn-operator-controller");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "vpn-operator", "namespace": NAMESPACE}])
    );
    get(&docs, "ClusterRole", "vpn-operator-controller");
    get(&docs, "Service", "vpn-operator-metrics");
    assert!(
        of_kind(&docs, "PodMonitor").is_empty(),
        "no PodMonitor by default"
    );
    assert!(find(&docs, "Deployment", "vpn-operator-api").is_none());
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "no API token Secret by default"
    );
    assert!(of_kind(&docs, "Role").is_empty());
}

/// One source of truth for the controller's permissions: the chart's rules
/// are exactly those of `deploy/controller.yaml`, which
/// crates/testenv/tests/control_plane.rs proves sufficient and least-privilege.
#[test]
fn controller_rules_are_those_of_the_plain_manifest() {
    if !helm_available("controller_rules_are_those_of_the_plain_manifest") {
        return;
    }
    let plain = repo_docs("deploy/controller.yaml");
    let expected = &of_kind(&plain, "ClusterRole")[0]["rules"];
    assert!(expected.as_array().is_some_and(|r| r.len() > 5));

    let docs = render(&[]);
    assert_eq!(
        &get(&docs, "ClusterRole", "vpn-operator-controller")["rules"],
        expected
    );

    let scoped = render(&["--set", "namespaces={vpn,scrapers}"]);
    let roles = of_kind(&scoped, "Role");
    assert_eq!(roles.len(), 2);
    for role in roles {
        assert_eq!(&role["rules"], expected);
    }
}

/// The chart's controller Pod is the plain manifest's: same probes, port,
/// security contexts, resources and environment (the image may differ).
#[test]
fn controller_pod_matches_the_plain_manifest() {
    if !helm_available("controller_pod_matches_the_plain_manifest") {
        return;
    }
    let plain = repo_docs("deploy/controller.yaml");
    let plain = of_kind(&plain, "Deployment")[0];
    let docs = render(&[]);
    let chart = get(&docs, "Deployment", "vpn-operator-controller");
    for key in [
        "livenessProbe",
        "readinessProbe",
        "ports",
        "securityContext",
        "resources",
        "env",
    ] {
        assert_eq!(
            container(chart)[key],
            container(plain)[key],
            "container {key}"
        );
    }
    for key in ["securityContext", "serviceAccountName"] {
        assert_eq!(
            chart["spec"]["template"]["spec"][key], plain["spec"]["template"]["spec"][key],
            "pod {key}"
        );
    }
    let plain_args = args(plain);
    assert_eq!(
        args(chart)[..3],
        plain_args[..3],
        "controller --metrics-addr ..."
    );
}

#[test]
fn original_values_work_unchanged() {
    if !helm_available("original_values_work_unchanged") {
        return;
    }
    let original = fixture("original-values.yaml");
    let original = original.to_str().unwrap();
    let docs = render(&["-f", original]);
    let deployment = get(&docs, "Deployment", "vpn-operator-controller");
    let c = container(deployment);
    assert_eq!(c["image"], "thavlik/vpn-operator:latest");
    assert_eq!(c["imagePullPolicy"], "Always");
    // Four controllers of 10m/32Mi requests and 100m/64Mi limits, in one process.
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "40m", "memory": "128Mi"}, "limits": {"cpu": "400m", "memory": "256Mi"}})
    );
    let monitor = get(&docs, "PodMonitor", "vpn-operator-controller");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"],
        json!([{"port": "metrics", "path": "/metrics"}])
    );
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "PodMonitor selects the controller Pods");
    }
    let service = get(&docs, "Service", "vpn-operator-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");

    let docs = render(&["-f", original, "--set", "prometheus.podMonitors=false"]);
    assert!(of_kind(&docs, "PodMonitor").is_empty());
    assert!(find(&docs, "Service", "vpn-operator-metrics").is_some());

    let docs = render(&[
        "-f",
        original,
        "--set",
        "prometheus.expose=false,prometheus.podMonitors=false",
    ]);
    assert!(find(&docs, "Service", "vpn-operator-metrics").is_none());
    let deployment = get(&docs, "Deployment", "vpn-operator-controller");
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"].is_null()
    );
    // The probes still reach the health endpoints on the same port.
    assert_eq!(
        container(deployment)["readinessProbe"]["httpGet"]["port"],
        "metrics"
    );
}

/// Early versions of the original chart had `prometheus: true|false` and
/// one top-level `resources`.
#[test]
fn early_original_keys_work() {
    if !helm_available("early_original_keys_work") {
        return;
    }
    let docs = render(&["--set", "prometheus=false"]);
    assert!(find(&docs, "Service", "vpn-operator-metrics").is_none());
    assert!(of_kind(&docs, "PodMonitor").is_empty());
    let docs = render(&["--set", "prometheus=true"]);
    get(&docs, "Service", "vpn-operator-metrics");
    get(&docs, "PodMonitor", "vpn-operator-controller");

    let resources = json!({"limits": {"memory": "128Mi", "cpu": "100m"}});
    let docs = render(&["--set-json", &format!("resources={resources}")]);
    let c = container(get(&docs, "Deployment", "vpn-operator-controller"));
    assert_eq!(c["resources"], resources);
    // The four controllers' keys win over it.
    let original = fixture("original-values.yaml");
    let docs = render(&[
        "-f",
        original.to_str().unwrap(),
        "--set-json",
        &format!("resources={resources}"),
    ]);
    let c = container(get(&docs, "Deployment", "vpn-operator-controller"));
    assert_eq!(c["resources"]["limits"]["cpu"], "400m");
}

/// The documented rule: requests add up; a limit exists when any controller
/// sets one and adds the others' limits, or their requests where they set none.
#[test]
fn controller_resources_add_up_by_the_documented_rule() {
    if !helm_available("controller_resources_add_up_by_the_documented_rule") {
        return;
    }
    let controllers = json!({
        "masks": {"resources": {"requests": {"cpu": 0.5, "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}},
        "providers": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "100M"}}},
        "consumers": {"resources": {"limits": {"memory": "1.5Gi"}}}
    });
    let set = format!("controllers={controllers}");
    let docs = render(&["--set-json", &set]);
    let c = container(get(&docs, "Deployment", "vpn-operator-controller"));
    assert_eq!(
        c["resources"],
        json!({
            "requests": {"cpu": "750m", "memory": "1536Mi", "ephemeral-storage": "100000000"},
            "limits": {"cpu": "1250m", "memory": "4Gi"}
        })
    );
}

#[test]
fn api_enabled_renders_the_api_with_its_flags() {
    if !helm_available("api_enabled_renders_the_api_with_its_flags") {
        return;
    }
    let docs = render(&[
        "--set",
        "api.enabled=true,api.namespace=proxies,api.maxProxies=20,api.tokens.values={tok-a,tok-b}",
        "--set",
        "imagePullPolicy=Never",
    ]);
    let deployment = get(&docs, "Deployment", "vpn-operator-api");
    let c = container(deployment);
    assert_eq!(c["image"], "localhost/vpn-operator:dev");
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(args(deployment)[0], "api");
    for (name, value) in [
        ("--listen", "0.0.0.0:8080"),
        ("--catalog", "/usr/share/vpn-operator/servers.json.xz"),
        ("--tokens-secret", "vpn-operator-api-tokens"),
        ("--namespace", "proxies"),
        ("--max-proxies", "20"),
        ("--proxy-image", "qmcgaw/gluetun:v3"),
        ("--proxy-port", "8888"),
        ("--body-limit", "16384"),
    ] {
        assert_eq!(flag(deployment, name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/health", "port": "http"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/health", "port": "http"})
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "vpn-operator-api"
    );
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/tokens"].is_string(),
        "token changes roll the API Pods"
    );

    let service = get(&docs, "Service", "vpn-operator-api");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    get(&docs, "ServiceAccount", "vpn-operator-api");

    let secret = get(&docs, "Secret", "vpn-operator-api-tokens");
    assert_eq!(secret["metadata"]["namespace"], "proxies");
    let tokens = secret["data"]["tokens"].as_str().unwrap();
    use base64::Engine as _;
    let tokens = base64::engine::general_purpose::STANDARD
        .decode(tokens)
        .unwrap();
    assert_eq!(String::from_utf8(tokens).unwrap(), "tok-a\ntok-b");

    let role = get(&docs, "Role", "vpn-operator-api");
    assert_eq!(role["metadata"]["namespace"], "proxies");
    assert_eq!(permissions(&role["rules"]), readme_api_permissions());
    let binding = get(&docs, "RoleBinding", "vpn-operator-api");
    assert_eq!(binding["metadata"]["namespace"], "proxies");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "vpn-operator-api", "namespace": NAMESPACE}])
    );

    // Without tokens a random one is generated; an existing Secret replaces it.
    let docs = render(&["--set", "api.enabled=true"]);
    let secret = get(&docs, "Secret", "vpn-operator-api-tokens");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    let generated = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["tokens"].as_str().unwrap())
        .unwrap();
    assert_eq!(generated.len(), 48);
    let docs = render(&["--set", "api.enabled=true,api.tokens.existingSecret=mine"]);
    assert!(of_kind(&docs, "Secret").is_empty());
    let deployment = get(&docs, "Deployment", "vpn-operator-api");
    assert_eq!(flag(deployment, "--tokens-secret").as_deref(), Some("mine"));
    assert_eq!(flag(deployment, "--max-proxies"), None);

    // A catalog volume replaces the image's server list.
    let docs = render(&[
        "--set",
        "api.enabled=true",
        "--set-json",
        r#"api.catalog.volume={"configMap":{"name":"gluetun-servers"}}"#,
    ]);
    let deployment = get(&docs, "Deployment", "vpn-operator-api");
    assert_eq!(
        flag(deployment, "--catalog").as_deref(),
        Some("/var/lib/vpn-operator/catalog")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([{"name": "catalog", "configMap": {"name": "gluetun-servers"}}])
    );
    assert_eq!(
        container(deployment)["volumeMounts"][0]["mountPath"],
        "/var/lib/vpn-operator/catalog"
    );

    // With PodMonitors, the API gets one too.
    let docs = render(&["--set", "api.enabled=true,prometheus.podMonitors=true"]);
    let monitor = get(&docs, "PodMonitor", "vpn-operator-api");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "http");
}

/// `(api group, resource) -> sorted verbs` of RBAC rules.
fn permissions(rules: &Value) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for rule in rules.as_array().expect("rules") {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let verbs = out
                    .entry((
                        group.as_str().unwrap().into(),
                        resource.as_str().unwrap().into(),
                    ))
                    .or_default();
                verbs.extend(
                    rule["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned()),
                );
                verbs.sort();
                verbs.dedup();
            }
        }
    }
    out
}

/// The README's list under "The API needs these permissions", as
/// `(api group, resource) -> sorted verbs`; the chart's API Role must grant
/// exactly that.
fn readme_api_permissions() -> BTreeMap<(String, String), Vec<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("The API needs these permissions")
        .expect("README lists the API's permissions");
    let groups = BTreeMap::from([
        ("secrets", ""),
        ("pods", ""),
        ("services", ""),
        ("leases", "coordination.k8s.io"),
        ("masks", "vpn.beebs.dev"),
        ("maskconsumers", "vpn.beebs.dev"),
    ]);
    let mut out = BTreeMap::new();
    for line in readme[start..]
        .lines()
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
    {
        let Some(item) = line.strip_prefix("- ") else {
            break;
        };
        let (resource, verbs) = item.split_once(':').expect("`- resource: verbs` line");
        let resource = resource.split_whitespace().next().unwrap();
        let group = groups.get(resource).unwrap_or_else(|| {
            panic!("README names a resource this test does not know: {resource}")
        });
        let mut verbs: Vec<String> = verbs
            .trim()
            .trim_end_matches(['.', ';'])
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        verbs.sort();
        out.insert((group.to_string(), resource.to_owned()), verbs);
    }
    assert!(
        out.len() >= 5,
        "README's API permission list not found: {out:?}"
    );
    out
}

#[test]
fn namespace_scope_renders_roles_instead_of_a_cluster_role() {
    if !helm_available("namespace_scope_renders_roles_instead_of_a_cluster_role") {
        return;
    }
    let docs = render(&["--set", "namespaces={vpn,scrapers}"]);
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    let mut scoped: Vec<String> = of_kind(&docs, "RoleBinding")
        .iter()
        .map(|b| {
            assert_eq!(b["roleRef"]["kind"], "Role");
            assert_eq!(b["subjects"][0]["namespace"], NAMESPACE);
            b["metadata"]["namespace"].as_str().unwrap().to_owned()
        })
        .collect();
    scoped.sort();
    assert_eq!(scoped, ["scrapers", "vpn"]);
    let deployment = get(&docs, "Deployment", "vpn-operator-controller");
    assert_eq!(
        flag(deployment, "--namespace").as_deref(),
        Some("vpn,scrapers")
    );

    // The controller must watch the namespace where the API makes its Masks.
    let err = try_render(&[
        "--set",
        "namespaces={vpn},api.enabled=true,api.namespace=proxies",
    ])
    .expect_err("the API's namespace outside the controller's scope must fail");
    assert!(err.contains("must be one of namespaces"), "{err}");
    let docs = render(&[
        "--set",
        "namespaces={vpn,proxies},api.enabled=true,api.namespace=proxies",
    ]);
    assert_eq!(
        get(&docs, "Role", "vpn-operator-api")["metadata"]["namespace"],
        "proxies"
    );
}

#[test]
fn scheduling_and_security_values_reach_every_pod() {
    if !helm_available("scheduling_and_security_values_reach_every_pod") {
        return;
    }
    let docs = render(&[
        "--set",
        "api.enabled=true,logFormat=text,nodeSelector.pool=vpn,podSecurityContext.fsGroup=2000",
        "--set-json",
        r#"tolerations=[{"key":"vpn","operator":"Exists"}]"#,
        "--set-json",
        r#"imagePullSecrets=[{"name":"regcred"}]"#,
    ]);
    for name in ["vpn-operator-controller", "vpn-operator-api"] {
        let d = get(&docs, "Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"pool": "vpn"}), "{name}");
        assert_eq!(pod["tolerations"][0]["key"], "vpn", "{name}");
        assert_eq!(
            pod["imagePullSecrets"],
            json!([{"name": "regcred"}]),
            "{name}"
        );
        assert_eq!(pod["securityContext"]["fsGroup"], 2000, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let env = container(d)["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": "VPNO_LOG_FORMAT", "value": "text"})),
            "{name}"
        );
    }
}

#[test]
fn lint_passes() {
    if !helm_available("lint_passes") {
        return;
    }
    let original = fixture("original-values.yaml");
    for extra in [
        vec![],
        vec!["-f", original.to_str().unwrap()],
        vec!["--set", "api.enabled=true,namespaces={vpn-operator}"],
    ] {
        let mut args = vec!["lint", "--strict"];
        args.extend(extra.iter().copied());
        let out = helm(&args).unwrap_or_else(|e| panic!("helm lint {extra:?} failed: {e}"));
        assert!(out.contains("1 chart(s) linted, no failures"), "{out}");
    }
    let err = helm(&["lint", "--set", "image="]).expect_err("an empty image must not lint");
    assert!(err.contains("/image") && err.contains("failed"), "{err}");
}

#[test]
fn schema_rejects_wrong_types_and_unknown_keys() {
    if !helm_available("schema_rejects_wrong_types_and_unknown_keys") {
        return;
    }
    for (set, path) in [
        ("prometheus.expose=yes", "/prometheus/expose"),
        ("imagePullPolicy=Sometimes", "/imagePullPolicy"),
        ("api.maxProxies=many", "/api/maxProxies"),
        ("controller.replicas=one", "/controller/replicas"),
        ("logFormat=xml", "/logFormat"),
    ] {
        let err = try_render(&["--set", set]).expect_err(set);
        assert!(err.contains(path), "{set}: {err}");
    }
    for (set, key) in [
        ("controler.replicas=2", "controler"),
        ("api.enable=true", "enable"),
        ("prometheus.podMonitor=true", "podMonitor"),
        ("controllers.mask.resources.limits.cpu=1", "mask"),
    ] {
        let err = try_render(&["--set", set]).expect_err(set);
        assert!(
            err.contains("additional properties") && err.contains(key),
            "{set}: {err}"
        );
    }
    let err = try_render(&["--set", "controllers.masks.resources.requests.cpu=ten"])
        .expect_err("a quantity the chart cannot add");
    assert!(
        err.contains("/controllers/masks/resources/requests/cpu"),
        "{err}"
    );
}

/// The chart's appVersion is the binary's version (no Helm needed).
#[test]
fn chart_app_version_is_the_crate_version() {
    let chart = &repo_docs("deploy/chart/vpn-operator/Chart.yaml")[0];
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["name"], "vpn-operator");
}

mod cluster {
    //! The chart installed by Helm into the real API server of
    //! `vpno_testenv::TestEnv` (no kubelet: Pods stay Pending), its
    //! components' permissions exercised by the real controller and API
    //! running in-process under the chart's ServiceAccounts, then uninstalled.

    use std::time::{Duration, Instant};

    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::Client;
    use kube::api::{Api, ListParams, ObjectMeta, PostParams};
    use serde_json::{Value, json};
    use vpno_api::{Mask, MaskProvider, MaskProviderSpec, VerifySpec};
    use vpno_testenv::TestEnv;

    const TIMEOUT: Duration = Duration::from_secs(60);

    async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(out) = f().await {
                return out;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `scripts/helm ARGS` off the async runtime.
    async fn helm(args: Vec<String>) -> Result<String, String> {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            super::helm(&args)
        })
        .await
        .unwrap()
    }

    /// A client acting as ServiceAccount `ns/name` (impersonation).
    fn as_service_account(env: &TestEnv, ns: &str, name: &str) -> Client {
        let mut config = env.config();
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{name}"));
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ]);
        Client::try_from(config).unwrap()
    }

    /// One HTTP request to the in-process API; `(status, JSON body)`.
    async fn call(
        base: &str,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"));
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let reply = client
            .request(req.body(Full::new(payload)).unwrap())
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let bytes = reply.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create_provider(admin: &Client, ns: &str) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("mullvad-creds".into()),
                ..Default::default()
            },
            string_data: Some([("VPN_SERVICE_PROVIDER".to_string(), "mullvad".to_string())].into()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let provider = MaskProvider::new(
            "mullvad",
            MaskProviderSpec {
                secret: "mullvad-creds".into(),
                max_slots: 1,
                tags: Some(vec!["mullvad".into()]),
                namespaces: None,
                verify: Some(VerifySpec {
                    skip: Some(true),
                    ..Default::default()
                }),
            },
        );
        Api::<MaskProvider>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &provider)
            .await
            .unwrap();
    }

    /// The token in the Secret the chart generated.
    async fn generated_token(admin: &Client, ns: &str, fullname: &str) -> String {
        let secret = Api::<Secret>::namespaced(admin.clone(), ns)
            .get(&format!("{fullname}-api-tokens"))
            .await
            .unwrap();
        let data = secret.data.expect("token Secret data");
        String::from_utf8(data["tokens"].0.clone()).unwrap()
    }

    /// Names of the objects labelled with the release.
    async fn labelled<K>(api: Api<K>, release: &str) -> Vec<String>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        selected(api, &format!("app.kubernetes.io/instance={release}")).await
    }

    /// Names of the objects matching a label selector.
    async fn selected<K>(api: Api<K>, selector: &str) -> Vec<String>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .iter()
            .map(|o| o.meta().name.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn installs_works_under_its_own_rbac_and_uninstalls_to_only_the_crds() {
        if !super::helm_available(
            "installs_works_under_its_own_rbac_and_uninstalls_to_only_the_crds",
        ) {
            return;
        }
        let Some(env) = TestEnv::shared() else { return };
        let admin = env.client().await;
        let ns = env.new_namespace("chart").await;
        let release = vpno_testenv::unique_name("vpno");
        let fullname = format!("{release}-vpn-operator");
        let kubeconfig = env.kubeconfig_path().to_str().unwrap().to_owned();

        let out = helm(
            [
                "install",
                &release,
                "--namespace",
                &ns,
                "--kubeconfig",
                &kubeconfig,
                "--set",
                "imagePullPolicy=Never,api.enabled=true,api.maxProxies=2",
                "--set",
                &format!("namespaces={{{ns}}}"),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("helm install failed: {e}"));
        assert!(out.contains("STATUS: deployed"), "{out}");

        // Everything the chart renders exists, accepted by the API server.
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
        for name in [format!("{fullname}-controller"), format!("{fullname}-api")] {
            let d = deployments.get(&name).await.unwrap();
            let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
            assert_eq!(c.image_pull_policy.as_deref(), Some("Never"), "{name}");
        }
        for name in [fullname.clone(), format!("{fullname}-api")] {
            Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
                .get(&name)
                .await
                .unwrap();
        }
        for name in [format!("{fullname}-metrics"), format!("{fullname}-api")] {
            Api::<Service>::namespaced(admin.clone(), &ns)
                .get(&name)
                .await
                .unwrap();
        }
        let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
        roles.get(&format!("{fullname}-controller")).await.unwrap();
        roles.get(&format!("{fullname}-api")).await.unwrap();
        let token = generated_token(&admin, &ns, &fullname).await;
        assert_eq!(token.len(), 48, "one random token generated at install");

        // An upgrade changes what it is asked to and keeps the generated token.
        let out = helm(
            [
                "upgrade",
                &release,
                "--namespace",
                &ns,
                "--kubeconfig",
                &kubeconfig,
                "--set",
                "imagePullPolicy=Never,api.enabled=true,api.maxProxies=2,controller.replicas=0",
                "--set",
                &format!("namespaces={{{ns}}}"),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("helm upgrade failed: {e}"));
        assert!(out.contains("REVISION: 2"), "{out}");
        let controller = deployments
            .get(&format!("{fullname}-controller"))
            .await
            .unwrap();
        assert_eq!(controller.spec.unwrap().replicas, Some(0));
        assert_eq!(generated_token(&admin, &ns, &fullname).await, token);

        // The controller, as the chart's controller ServiceAccount, assigns a
        // slot; the API, as the API's, reads its token Secret, creates a proxy
        // (record Secret, Lease, Mask, then Pod and Service) and deletes it.
        let ctl = as_service_account(env, &ns, &fullname);
        let api = as_service_account(env, &ns, &format!("{fullname}-api"));
        eventually("the RoleBindings to take effect", async || {
            Api::<Mask>::namespaced(api.clone(), &ns)
                .list(&ListParams::default())
                .await
                .ok()
        })
        .await;
        create_provider(&admin, &ns).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let controller = tokio::spawn(vpno_controller::run_with_client(
            ctl,
            vpno_controller::ControllerConfig::for_namespaces([ns.clone()]),
            shutdown.clone(),
        ));

        let tokens = vpno_server::load_tokens(
            None,
            Some(&format!("{fullname}-api-tokens")),
            Some(&api),
            &ns,
        )
        .await
        .expect("the API's ServiceAccount reads the chart's token Secret");
        let catalog = super::repo().join("crates/catalog/testdata/manifest");
        let mut config = vpno_server::ApiConfig::new(catalog, tokens, ns.clone());
        config.max_proxies = Some(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = vpno_server::start(config, Some(api), listener)
            .await
            .unwrap();
        let base = running.url();

        let (status, created) = call(
            &base,
            &token,
            "POST",
            "/proxies",
            Some(json!({"provider": "mullvad"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let proxy = format!("/proxies/{id}");
        eventually(
            "the proxy Pod, created by the API's ServiceAccount",
            async || {
                let (status, body) = call(&base, &token, "GET", &proxy, None).await;
                assert_eq!(status, 200, "{body}");
                (body["state"] == "starting").then_some(())
            },
        )
        .await;
        Api::<Pod>::namespaced(admin.clone(), &ns)
            .get(&id)
            .await
            .unwrap();
        // The API creates the Service right after the Pod: wait for it too.
        let services = Api::<Service>::namespaced(admin.clone(), &ns);
        eventually("the proxy Service", async || {
            services.get_opt(&id).await.unwrap()
        })
        .await;
        let (status, body) = call(&base, &token, "DELETE", &proxy, None).await;
        assert!(
            (200..300).contains(&status),
            "DELETE {proxy}: {status} {body}"
        );
        eventually("the proxy's Mask to go", async || {
            Api::<Mask>::namespaced(admin.clone(), &ns)
                .get_opt(&id)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        drop(running);
        shutdown.cancel();
        let _ = controller.await;

        // `upgrade` of a missing release fails; with --install it installs.
        let other = vpno_testenv::unique_name("other");
        let minimal = "rbac.create=false,serviceAccount.create=false,prometheus.expose=false";
        let cluster = [
            "--namespace",
            &ns,
            "--kubeconfig",
            &kubeconfig,
            "--set",
            minimal,
        ];
        let mut upgrade: Vec<String> = ["upgrade", &other].map(String::from).to_vec();
        upgrade.extend(cluster.map(String::from));
        let err = helm(upgrade.clone())
            .await
            .expect_err("upgrading a release that does not exist");
        assert!(
            err.contains("not found") || err.contains("no deployed releases"),
            "{err}"
        );
        upgrade.push("--install".into());
        let out = helm(upgrade.clone())
            .await
            .unwrap_or_else(|e| panic!("upgrade --install: {e}"));
        assert!(out.contains("REVISION: 1"), "{out}");
        let out = helm(upgrade)
            .await
            .unwrap_or_else(|e| panic!("upgrade --install: {e}"));
        assert!(out.contains("REVISION: 2"), "{out}");
        deployments
            .get(&format!("{other}-vpn-operator-controller"))
            .await
            .unwrap();
        helm(
            [
                "uninstall",
                &other,
                "--namespace",
                &ns,
                "--kubeconfig",
                &kubeconfig,
            ]
            .map(String::from)
            .to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("helm uninstall {other}: {e}"));

        // Uninstall leaves nothing of the release; the CRDs stay.
        let out = helm(
            [
                "uninstall",
                &release,
                "--namespace",
                &ns,
                "--kubeconfig",
                &kubeconfig,
                "--wait",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("helm uninstall failed: {e}"));
        assert!(out.contains("uninstalled"), "{out}");
        eventually("every object of the release to be gone", async || {
            let mut left = Vec::new();
            left.extend(
                labelled(Api::<Deployment>::namespaced(admin.clone(), &ns), &release).await,
            );
            left.extend(labelled(Api::<Pod>::namespaced(admin.clone(), &ns), &release).await);
            left.extend(labelled(Api::<Service>::namespaced(admin.clone(), &ns), &release).await);
            left.extend(labelled(Api::<Secret>::namespaced(admin.clone(), &ns), &release).await);
            left.extend(
                labelled(
                    Api::<ServiceAccount>::namespaced(admin.clone(), &ns),
                    &release,
                )
                .await,
            );
            left.extend(labelled(Api::<Role>::namespaced(admin.clone(), &ns), &release).await);
            left.extend(
                labelled(Api::<RoleBinding>::namespaced(admin.clone(), &ns), &release).await,
            );
            left.extend(labelled(Api::<ClusterRole>::all(admin.clone()), &release).await);
            left.extend(labelled(Api::<ClusterRoleBinding>::all(admin.clone()), &release).await);
            // Helm's own record of the release.
            let helm_records = format!("owner=helm,name={release}");
            left.extend(
                selected(Api::<Secret>::namespaced(admin.clone(), &ns), &helm_records).await,
            );
            left.is_empty().then_some(()).or_else(|| {
                eprintln!("still there: {left:?}");
                None
            })
        })
        .await;
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(admin.clone());
        for crd in vpno_api::crd::all() {
            let name = crd.metadata.name.unwrap();
            assert!(
                crds.get_opt(&name).await.unwrap().is_some(),
                "{name} must stay"
            );
        }
    }
}
