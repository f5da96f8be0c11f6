//! Tests against the real control plane. One test binary = one control plane
//! (`TestEnv::shared()`); every test works in its own namespace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{Condition, conditions};
use kube::{Resource, ResourceExt};
use vpno_api::{MaskProvider, MaskProviderSpec, VerifySpec};
use vpno_testenv::TestEnv;

fn provider(name: &str, max_slots: u32) -> MaskProvider {
    MaskProvider::new(
        name,
        MaskProviderSpec {
            secret: format!("{name}-creds"),
            max_slots,
            tags: Some(vec!["test".into()]),
            verify: Some(VerifySpec {
                skip: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn starts_and_serves_the_crds_established() {
    let Some(env) = TestEnv::shared() else { return };
    assert!(env.server_url().starts_with("https://127.0.0.1:"));
    assert!(env.kubeconfig_path().is_file());
    eprintln!("control plane start-up took {:?}", env.startup_duration());
    let client = env.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in vpno_api::crd::all() {
        let name = crd.name_any();
        let live = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} missing: {e}"));
        assert!(
            conditions::is_crd_established().matches_object(Some(&live)),
            "CRD {name} is not established"
        );
    }
}

#[tokio::test]
async fn kubeconfig_file_gives_a_working_client() {
    let Some(env) = TestEnv::shared() else { return };
    let kc = kube::config::Kubeconfig::read_from(env.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "20")
    );
}

#[tokio::test]
async fn creates_and_lists_mask_providers_in_a_new_namespace() {
    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let ns = env.new_namespace("providers").await;
    let other = env.new_namespace("providers").await;
    assert_ne!(ns, other);
    let live = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    assert_eq!(
        live.labels().get("vpno-testenv").map(String::as_str),
        Some("true")
    );

    let api: Api<MaskProvider> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &provider("alpha", 3))
        .await
        .unwrap();
    api.create(&PostParams::default(), &provider("beta", 5))
        .await
        .unwrap();
    let mut listed: Vec<(String, u32)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name_any(), p.spec.max_slots))
        .collect();
    listed.sort();
    assert_eq!(listed, [("alpha".to_string(), 3), ("beta".to_string(), 5)]);
    // The other namespace stays empty: namespaces isolate tests.
    let in_other: Api<MaskProvider> = Api::namespaced(client, &other);
    assert!(
        in_other
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn owner_reference_garbage_collection_works() {
    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let ns = env.new_namespace("gc").await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".into());
    let owner = owners.create(&PostParams::default(), &owner).await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let mut dependent = Secret::default();
    dependent.metadata.name = Some("dependent".into());
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: ConfigMap::api_version(&()).into_owned(),
        kind: ConfigMap::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    dependent.string_data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    secrets
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    owners
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if secrets.get_opt("dependent").await.unwrap().is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the garbage collector did not delete the dependent Secret within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates an unchecked object from JSON and returns the API server's answer.
async fn create_raw_provider(
    env: &TestEnv,
    ns: &str,
    spec: serde_json::Value,
) -> Result<MaskProvider, kube::Error> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client().await,
        ns,
        &kube::api::ApiResource::erase::<MaskProvider>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "vpn.beebs.dev/v1",
        "kind": "MaskProvider",
        "metadata": {"name": "raw", "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await?;
    Ok(serde_json::from_value(serde_json::to_value(created).unwrap()).unwrap())
}

fn assert_invalid(result: Result<MaskProvider, kube::Error>, field: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains(field),
                "message should name {field}: {}",
                status.message
            );
        }
        other => panic!("expected 422 Invalid naming {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn crd_schema_rejects_invalid_providers() {
    let Some(env) = TestEnv::shared() else { return };
    let ns = env.new_namespace("schema").await;
    assert_invalid(
        create_raw_provider(env, &ns, serde_json::json!({"secret": "s", "maxSlots": -1})).await,
        "maxSlots",
    );
    assert_invalid(
        create_raw_provider(
            env,
            &ns,
            serde_json::json!({"secret": "s", "maxSlots": 1, "verify": {"timeout": "soon"}}),
        )
        .await,
        "verify.timeout",
    );
    assert_invalid(
        create_raw_provider(env, &ns, serde_json::json!({"maxSlots": 1})).await,
        "secret",
    );
    // The same object with valid values is accepted (the rejections above are about the values).
    let ok = create_raw_provider(
        env,
        &ns,
        serde_json::json!({"secret": "s", "maxSlots": 0, "verify": {"timeout": "1m30s", "interval": "1h"}}),
    )
    .await
    .unwrap();
    assert_eq!(ok.spec.max_slots, 0);
    assert_eq!(ok.spec.verify.unwrap().timeout.as_deref(), Some("1m30s"));
}

#[test]
fn private_instance_starts_and_stops_cleanly() {
    // Runs on a plain test thread: `start` is blocking and works outside a runtime.
    if TestEnv::shared().is_none() {
        return; // prerequisites missing (SKIPPED already printed)
    }
    let env = TestEnv::start().expect("private control plane");
    let dir = env.dir().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = env.server_url().to_string();
    rt.block_on(async {
        let cms: Api<ConfigMap> = Api::namespaced(env.client().await, "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("private".into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    });
    assert_ne!(
        Some(url.as_str()),
        TestEnv::shared().map(|s| s.server_url())
    );
    env.stop();
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "kube-apiserver still listening after stop()"
    );
}

/// What `deploy/controller.yaml` holds, by kind.
fn deploy_docs() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/controller.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn doc_of<T: serde::de::DeserializeOwned>(docs: &[serde_json::Value], kind: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/controller.yaml has no {kind}"));
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{kind} in deploy/controller.yaml: {e}"))
}

const SA_USER: &str = "system:serviceaccount:vpn-operator:vpn-operator";

/// Asks the API server whether the controller's ServiceAccount may do `verb`
/// on `group/resource[/subresource]` in namespace `ns` ("" = cluster scope).
async fn sa_may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    sub: &str,
    ns: &str,
) -> bool {
    sa_may_named(client, verb, group, resource, sub, ns, None).await
}

/// Like [`sa_may`], for one object `name`.
async fn sa_may_named(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    sub: &str,
    ns: &str,
    name: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(SA_USER.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:vpn-operator".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: (!sub.is_empty()).then(|| sub.into()),
                namespace: (!ns.is_empty()).then(|| ns.into()),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.expect("SubjectAccessReview status").allowed
}

#[tokio::test]
async fn deploy_manifest_rbac_is_least_privilege_and_sufficient() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let docs = deploy_docs();
    let apply = kube::api::PatchParams::apply("vpno-testenv-test").force();

    let ns: Namespace = doc_of(&docs, "Namespace");
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name_any(), &apply, &kube::api::Patch::Apply(&ns))
        .await
        .unwrap();
    let sa: ServiceAccount = doc_of(&docs, "ServiceAccount");
    assert_eq!(
        format!(
            "system:serviceaccount:{}:{}",
            sa.namespace().unwrap(),
            sa.name_any()
        ),
        SA_USER
    );
    Api::<ServiceAccount>::namespaced(client.clone(), "vpn-operator")
        .patch(&sa.name_any(), &apply, &kube::api::Patch::Apply(&sa))
        .await
        .unwrap();
    let role: ClusterRole = doc_of(&docs, "ClusterRole");
    Api::<ClusterRole>::all(client.clone())
        .patch(&role.name_any(), &apply, &kube::api::Patch::Apply(&role))
        .await
        .unwrap();
    let binding: ClusterRoleBinding = doc_of(&docs, "ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            &binding.name_any(),
            &apply,
            &kube::api::Patch::Apply(&binding),
        )
        .await
        .unwrap();

    // The Deployment is valid for the API server (dry run) and has the probes,
    // limits and hardening the deployment needs.
    let deployment: Deployment = doc_of(&docs, "Deployment");
    Api::<Deployment>::namespaced(client.clone(), "vpn-operator")
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &deployment,
        )
        .await
        .expect("Deployment accepted by the API server (dry run)");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("vpn-operator"));
    let c = &pod.containers[0];
    assert_eq!(c.args.as_ref().unwrap()[0], "controller");
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert!(
        c.ports
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.container_port == 8080)
    );
    let res = c.resources.as_ref().unwrap();
    assert!(
        res.limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory") && l.contains_key("cpu"))
    );
    assert!(
        res.requests
            .as_ref()
            .is_some_and(|l| l.contains_key("memory") && l.contains_key("cpu"))
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );

    // RBAC takes effect asynchronously in the authorizer's cache: wait for one grant first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sa_may(&client, "list", "vpn.beebs.dev", "maskproviders", "", "").await {
        assert!(
            Instant::now() < deadline,
            "the ClusterRoleBinding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the controller does (see crates/controller): every one must be allowed.
    let needed: &[(&str, &str, &str, &str)] = &[
        ("get", "vpn.beebs.dev", "maskproviders", ""),
        ("list", "vpn.beebs.dev", "maskproviders", ""),
        ("watch", "vpn.beebs.dev", "maskproviders", ""),
        ("patch", "vpn.beebs.dev", "maskproviders", ""),
        ("patch", "vpn.beebs.dev", "maskproviders", "status"),
        ("get", "vpn.beebs.dev", "masks", ""),
        ("list", "vpn.beebs.dev", "masks", ""),
        ("watch", "vpn.beebs.dev", "masks", ""),
        ("create", "vpn.beebs.dev", "masks", ""),
        ("patch", "vpn.beebs.dev", "masks", ""),
        ("delete", "vpn.beebs.dev", "masks", ""),
        ("get", "vpn.beebs.dev", "maskgateways", ""),
        ("list", "vpn.beebs.dev", "maskgateways", ""),
        ("watch", "vpn.beebs.dev", "maskgateways", ""),
        ("patch", "vpn.beebs.dev", "maskgateways", "status"),
        ("update", "vpn.beebs.dev", "maskgateways", "finalizers"),
        ("list", "", "nodes", ""),
        ("watch", "", "nodes", ""),
        ("create", "", "serviceaccounts", ""),
        ("create", "rbac.authorization.k8s.io", "roles", ""),
        ("create", "rbac.authorization.k8s.io", "rolebindings", ""),
        ("patch", "vpn.beebs.dev", "masks", "status"),
        ("watch", "vpn.beebs.dev", "maskconsumers", ""),
        ("create", "vpn.beebs.dev", "maskconsumers", ""),
        ("patch", "vpn.beebs.dev", "maskconsumers", ""),
        ("delete", "vpn.beebs.dev", "maskconsumers", ""),
        ("patch", "vpn.beebs.dev", "maskconsumers", "status"),
        ("get", "vpn.beebs.dev", "maskconsumers", ""),
        ("list", "vpn.beebs.dev", "maskconsumers", ""),
        ("get", "vpn.beebs.dev", "maskreservations", ""),
        ("list", "vpn.beebs.dev", "maskreservations", ""),
        ("watch", "vpn.beebs.dev", "maskreservations", ""),
        ("create", "vpn.beebs.dev", "maskreservations", ""),
        ("delete", "vpn.beebs.dev", "maskreservations", ""),
        ("patch", "vpn.beebs.dev", "maskreservations", "status"),
        ("update", "vpn.beebs.dev", "maskconsumers", "finalizers"),
        ("update", "vpn.beebs.dev", "masks", "finalizers"),
        ("update", "vpn.beebs.dev", "maskproviders", "finalizers"),
        ("get", "", "pods", ""),
        ("list", "", "pods", ""),
        ("list", "", "secrets", ""),
        ("delete", "", "secrets", ""),
        ("get", "", "secrets", ""),
        ("watch", "", "secrets", ""),
        ("create", "", "secrets", ""),
        ("update", "", "secrets", ""),
        ("create", "", "pods", ""),
        ("delete", "", "pods", ""),
        ("watch", "", "pods", ""),
        ("list", "apps", "deployments", ""),
        ("delete", "apps", "deployments", ""),
        ("list", "apps", "replicasets", ""),
        ("delete", "apps", "replicasets", ""),
        ("list", "apps", "statefulsets", ""),
        ("delete", "apps", "statefulsets", ""),
        ("list", "apps", "daemonsets", ""),
        ("delete", "apps", "daemonsets", ""),
        ("list", "batch", "jobs", ""),
        ("delete", "batch", "jobs", ""),
        ("create", "events.k8s.io", "events", ""),
        ("patch", "events.k8s.io", "events", ""),
    ];
    for &(verb, group, resource, sub) in needed {
        for ns in ["", "some-team"] {
            assert!(
                sa_may(&client, verb, group, resource, sub, ns).await,
                "the controller's ServiceAccount may not {verb} {group}/{resource}/{sub} (namespace {ns:?})"
            );
        }
    }
    // kubeadm's configuration, by its name only (the service range).
    assert!(
        sa_may_named(
            &client,
            "get",
            "",
            "configmaps",
            "",
            "kube-system",
            Some("kubeadm-config")
        )
        .await,
        "the controller may not read kube-system/kubeadm-config"
    );
    assert!(
        !sa_may_named(
            &client,
            "get",
            "",
            "configmaps",
            "",
            "kube-system",
            Some("other")
        )
        .await,
        "the controller may read other ConfigMaps"
    );
    // What it never does: all must be denied.
    let forbidden: &[(&str, &str, &str, &str, &str)] = &[
        ("delete", "", "namespaces", "", ""),
        ("create", "", "namespaces", "", ""),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "",
        ),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "", ""),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "",
        ),
        ("impersonate", "", "serviceaccounts", "", "some-team"),
        ("get", "", "configmaps", "", "some-team"),
        ("create", "", "pods", "exec", "some-team"),
        ("patch", "", "pods", "", "some-team"),
        ("update", "apps", "deployments", "", "vpn-operator"),
        ("create", "apps", "deployments", "", "some-team"),
        ("patch", "apps", "replicasets", "", "some-team"),
        ("get", "apps", "statefulsets", "", "some-team"),
        ("watch", "apps", "daemonsets", "", "some-team"),
        ("create", "batch", "jobs", "", "some-team"),
        ("delete", "batch", "cronjobs", "", "some-team"),
        ("deletecollection", "apps", "deployments", "", "some-team"),
        ("create", "vpn.beebs.dev", "maskproviders", "", "some-team"),
        ("delete", "vpn.beebs.dev", "maskproviders", "", "some-team"),
        ("update", "vpn.beebs.dev", "masks", "status", "some-team"),
        ("update", "vpn.beebs.dev", "maskproviders", "", "some-team"),
        (
            "patch",
            "vpn.beebs.dev",
            "maskreservations",
            "",
            "some-team",
        ),
        (
            "update",
            "vpn.beebs.dev",
            "maskreservations",
            "finalizers",
            "some-team",
        ),
        ("deletecollection", "", "secrets", "", "some-team"),
        ("get", "", "nodes", "", ""),
        ("patch", "", "nodes", "", ""),
        ("get", "", "configmaps", "", "kube-system"),
        ("create", "vpn.beebs.dev", "maskgateways", "", "some-team"),
        ("patch", "vpn.beebs.dev", "maskgateways", "", "some-team"),
        ("delete", "vpn.beebs.dev", "maskgateways", "", "some-team"),
        (
            "update",
            "vpn.beebs.dev",
            "maskgateways",
            "status",
            "some-team",
        ),
        ("delete", "", "serviceaccounts", "", "some-team"),
        ("create", "", "serviceaccounts", "token", "some-team"),
        (
            "update",
            "rbac.authorization.k8s.io",
            "roles",
            "",
            "some-team",
        ),
        (
            "delete",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "",
            "some-team",
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "",
            "",
        ),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "",
        ),
    ];
    for &(verb, group, resource, sub, ns) in forbidden {
        assert!(
            !sa_may(&client, verb, group, resource, sub, ns).await,
            "the controller's ServiceAccount may {verb} {group}/{resource}/{sub} (namespace {ns:?}): not least privilege"
        );
    }

    // And for real, impersonating the ServiceAccount.
    let mut config = env.config();
    config.auth_info.impersonate = Some(SA_USER.into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:authenticated".into(),
    ]);
    let as_sa = kube::Client::try_from(config).unwrap();
    Api::<MaskProvider>::all(as_sa.clone())
        .list(&ListParams::default())
        .await
        .expect("SA lists providers");
    let victim = env.new_namespace("rbac-victim").await;
    match Api::<Namespace>::all(as_sa)
        .delete(&victim, &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!(
            "deleting a namespace as the controller's ServiceAccount should be forbidden: {other:?}"
        ),
    }
}

/// Waits up to 60 s for `check` to hold, polling every 200 ms.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ClusterRole is not only narrow but sufficient: the real controller,
/// running as the ServiceAccount (impersonated), assigns a Mask in another
/// namespace than its provider, releases the slot when the Mask goes, and
/// lets a deleted provider go.
#[tokio::test]
async fn controller_works_with_only_the_deploy_manifest_rbac() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use vpno_api::{Mask, MaskConsumer, MaskPhase, MaskReservation, MaskSpec};

    let Some(env) = TestEnv::shared() else { return };
    let admin = env.client().await;
    let docs = deploy_docs();
    let apply = kube::api::PatchParams::apply("vpno-testenv-test").force();
    let ns: Namespace = doc_of(&docs, "Namespace");
    Api::<Namespace>::all(admin.clone())
        .patch(&ns.name_any(), &apply, &kube::api::Patch::Apply(&ns))
        .await
        .unwrap();
    let sa: ServiceAccount = doc_of(&docs, "ServiceAccount");
    Api::<ServiceAccount>::namespaced(admin.clone(), "vpn-operator")
        .patch(&sa.name_any(), &apply, &kube::api::Patch::Apply(&sa))
        .await
        .unwrap();
    let role: ClusterRole = doc_of(&docs, "ClusterRole");
    Api::<ClusterRole>::all(admin.clone())
        .patch(&role.name_any(), &apply, &kube::api::Patch::Apply(&role))
        .await
        .unwrap();
    let binding: ClusterRoleBinding = doc_of(&docs, "ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            &binding.name_any(),
            &apply,
            &kube::api::Patch::Apply(&binding),
        )
        .await
        .unwrap();

    let providers_ns = env.new_namespace("rbac-providers").await;
    let masks_ns = env.new_namespace("rbac-masks").await;
    let mut config = env.config();
    config.auth_info.impersonate = Some(SA_USER.into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:authenticated".into(),
    ]);
    let as_sa = kube::Client::try_from(config).unwrap();
    eventually("the ClusterRoleBinding to take effect", || async {
        Api::<MaskProvider>::namespaced(as_sa.clone(), &providers_ns)
            .list(&ListParams::default())
            .await
            .is_ok()
    })
    .await;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let controller = tokio::spawn(vpno_controller::run_with_client(
        as_sa,
        vpno_controller::ControllerConfig::for_namespaces([providers_ns.clone(), masks_ns.clone()]),
        shutdown.clone(),
    ));
    // Stops the controller even when an assertion fails.
    struct Stop(tokio_util::sync::CancellationToken);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    let _stop = Stop(shutdown.clone());

    let mut secret = Secret::default();
    secret.metadata.name = Some("p-creds".into());
    secret.string_data = Some(BTreeMap::from([(
        "WIREGUARD_PRIVATE_KEY".to_string(),
        "k".to_string(),
    )]));
    Api::<Secret>::namespaced(admin.clone(), &providers_ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut p = provider("p", 1);
    p.spec.secret = "p-creds".into();
    let providers: Api<MaskProvider> = Api::namespaced(admin.clone(), &providers_ns);
    providers.create(&PostParams::default(), &p).await.unwrap();
    let masks: Api<Mask> = Api::namespaced(admin.clone(), &masks_ns);
    masks
        .create(&PostParams::default(), &Mask::new("m", MaskSpec::default()))
        .await
        .unwrap();

    eventually(
        "the Mask to become Active under the ServiceAccount's permissions",
        || async {
            masks
                .get("m")
                .await
                .is_ok_and(|m| m.phase() == MaskPhase::Active)
        },
    )
    .await;
    let consumer = Api::<MaskConsumer>::namespaced(admin.clone(), &masks_ns)
        .get("m")
        .await
        .unwrap();
    let secret_name = consumer
        .assignment()
        .expect("consumer assigned")
        .secret
        .clone();
    let copy = Api::<Secret>::namespaced(admin.clone(), &masks_ns)
        .get(&secret_name)
        .await
        .unwrap();
    assert!(copy.data.unwrap().contains_key("WIREGUARD_PRIVATE_KEY"));

    let reservations: Api<MaskReservation> = Api::namespaced(admin.clone(), &providers_ns);
    assert_eq!(
        reservations
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    masks
        .delete("m", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the slot to be released after the Mask was deleted",
        || async {
            reservations
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    providers
        .delete("p", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the deleted provider to be finalized by the controller",
        || async { providers.get_opt("p").await.is_ok_and(|p| p.is_none()) },
    )
    .await;

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), controller).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "controller did not stop cleanly: {result:?}"
    );
}
