//! The proxy API against a real API server (`vpno-testenv`; one file, so one
//! control plane) with the real Mask controller running in-process. Each test
//! has its own namespace, controller and API instances; the tests play the
//! kubelet by writing Pod status. Every response is checked against the
//! instance's `/openapi.json`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{ApiClient, testdata_catalog};
use tokio_util::sync::CancellationToken;
use vpno_api::{Mask, MaskConsumer, MaskProvider, MaskProviderSpec, MaskReservation, VerifySpec};
use vpno_server::{ApiConfig, RunningApi, TokenSet};
use vpno_testenv::TestEnv;

const TOKEN: &str = "kube-test-token";
const TIMEOUT: Duration = Duration::from_secs(40);

/// A controller scoped to one namespace; stopped on drop.
struct Controller {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    fn start(client: &Client, ns: &str) -> Self {
        let token = CancellationToken::new();
        let (t, c, config) = (
            token.clone(),
            client.clone(),
            vpno_controller::ControllerConfig::for_namespaces([ns]),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = vpno_controller::run_with_client(c, config, t).await {
                panic!("controller failed: {e}");
            }
        });
        Controller { token, task }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.token.cancel();
        self.task.abort();
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(out) = f().await {
            return out;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a provider with `max_slots` slots, tagged `mullvad`, verification skipped.
async fn create_provider(client: &Client, ns: &str, name: &str, max_slots: u32) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-creds")),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "VPN_SERVICE_PROVIDER".to_owned(),
                ByteString(b"mullvad".to_vec()),
            ),
            (
                "WIREGUARD_PRIVATE_KEY".to_owned(),
                ByteString(b"not-a-real-key".to_vec()),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let provider = MaskProvider::new(
        name,
        MaskProviderSpec {
            secret: format!("{name}-creds"),
            max_slots,
            tags: Some(vec!["mullvad".into()]),
            namespaces: None,
            verify: Some(VerifySpec {
                skip: Some(true),
                ..Default::default()
            }),
        },
    );
    Api::<MaskProvider>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &provider)
        .await
        .unwrap();
}

async fn start_api(client: &Client, ns: &str, max_proxies: Option<u32>) -> (RunningApi, ApiClient) {
    let mut config = ApiConfig::new(testdata_catalog(), TokenSet::new([TOKEN]), ns);
    config.max_proxies = max_proxies;
    start_api_with(client, config).await
}

async fn start_api_with(client: &Client, config: ApiConfig) -> (RunningApi, ApiClient) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = vpno_server::start(config, Some(client.clone()), listener)
        .await
        .unwrap();
    let http = ApiClient::new(api.url(), Some(TOKEN.into())).await;
    (api, http)
}

async fn setup(prefix: &str) -> Option<(Client, String)> {
    let env = TestEnv::shared()?;
    let client = env.client().await;
    let ns = env.new_namespace(prefix).await;
    Some((client, ns))
}

/// Plays the kubelet: the Pod runs, is ready and has an IP.
async fn run_pod(client: &Client, ns: &str, name: &str, ip: &str) {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn proxy_state(http: &ApiClient, id: &str) -> (String, Value) {
    let reply = http.get(&format!("/proxies/{id}"), "/proxies/{id}").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    (reply.body["state"].as_str().unwrap().to_owned(), reply.body)
}

#[tokio::test]
async fn start_list_get_destroy() {
    let Some((client, ns)) = setup("api-lifecycle").await else {
        return;
    };
    let _ctl = Controller::start(&client, &ns);
    create_provider(&client, &ns, "mullvad-a", 2).await;
    let (_api, http) = start_api(&client, &ns, None).await;

    let body = json!({"provider": "mullvad", "country": ["Sweden"], "city": ["Stockholm"], "vpn": "wireguard"});
    let created = http.call("POST", "/proxies", "/proxies", Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(
        matches!(created.body["state"].as_str(), Some("pending" | "starting")),
        "{}",
        created.body
    );
    assert_eq!(created.body["endpoint"], format!("{id}.{ns}.svc:8888"));
    let password = created.body["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(password.len() >= 16);

    // Listed, without credentials.
    let list = http.get("/proxies", "/proxies").await;
    assert_eq!(list.body["total"], 1);
    assert_eq!(list.body["proxies"][0]["id"], id.as_str());
    assert!(list.body["proxies"][0].get("credentials").is_none());

    // Once the Mask is Active, the API creates the Pod and Service, owned by the consumer.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = eventually("the proxy Pod", async || pods.get_opt(&id).await.unwrap()).await;
    let consumer = Api::<MaskConsumer>::namespaced(client.clone(), &ns)
        .get(&id)
        .await
        .unwrap();
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("MaskConsumer", consumer.metadata.uid.as_deref().unwrap())
    );
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let env: BTreeMap<String, Option<String>> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert_eq!(env["HTTPPROXY"].as_deref(), Some("on"));
    assert_eq!(env["SERVER_COUNTRIES"].as_deref(), Some("Sweden"));
    assert_eq!(env["SERVER_CITIES"].as_deref(), Some("Stockholm"));
    assert_eq!(
        env["HTTPPROXY_PASSWORD"], None,
        "the password is referenced, not inlined"
    );
    let secret_name = &container.env_from.as_ref().unwrap()[0]
        .secret_ref
        .as_ref()
        .unwrap()
        .name;
    assert_eq!(Some(secret_name), consumer.assignment().map(|a| &a.secret));
    // The API creates the Service right after the Pod: wait for it too.
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let svc = eventually("the proxy Service", async || {
        services.get_opt(&id).await.unwrap()
    })
    .await;
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8888);

    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "starting", "{view}");
    assert_eq!(view["assigned_provider"], "mullvad-a");
    run_pod(&client, &ns, &id, "10.244.0.7").await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "ready", "{view}");
    assert_eq!(view["pod_ip"], "10.244.0.7");
    assert_eq!(view["credentials"]["password"], password.as_str());
    let alias = http.get(&format!("/status/{id}"), "/status/{id}").await;
    assert_eq!(alias.body, view);
    assert_eq!(http.get("/status", "/status").await.body["total"], 1);

    // Destroy through the alias; everything goes, the slot is released.
    let deleted = http
        .call("DELETE", &format!("/destroy/{id}"), "/destroy/{id}", None)
        .await;
    assert_eq!(
        (deleted.status, deleted.body["state"].as_str()),
        (200, Some("deleting"))
    );
    assert_eq!(
        http.get(&format!("/proxies/{id}"), "/proxies/{id}")
            .await
            .status,
        404
    );
    assert_eq!(
        http.call("DELETE", &format!("/proxies/{id}"), "/proxies/{id}", None)
            .await
            .status,
        404
    );
    assert_eq!(http.get("/proxies", "/proxies").await.body["total"], 0);
    let masks = Api::<Mask>::namespaced(client.clone(), &ns);
    let reservations = Api::<MaskReservation>::namespaced(client.clone(), &ns);
    eventually("Mask, Pod and reservation gone", async || {
        let gone = masks.get_opt(&id).await.unwrap().is_none()
            && pods.get_opt(&id).await.unwrap().is_none()
            && reservations
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn pending_and_failed_proxies_say_why() {
    let Some((client, ns)) = setup("api-pending").await else {
        return;
    };
    let _ctl = Controller::start(&client, &ns);
    create_provider(&client, &ns, "mullvad-one", 1).await;
    let (_api, http) = start_api(&client, &ns, None).await;
    let create = async || {
        let reply = http
            .call(
                "POST",
                "/start",
                "/start",
                Some(json!({"provider": "mullvad"})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    };
    let first = create().await;
    eventually("the first proxy to get the slot", async || {
        (proxy_state(&http, &first).await.0 == "starting").then_some(())
    })
    .await;
    let second = create().await;
    let view = eventually("the second proxy to wait", async || {
        let (state, view) = proxy_state(&http, &second).await;
        (state == "pending" && view["mask_phase"] == "Waiting").then_some(view)
    })
    .await;
    assert!(
        view["message"].as_str().unwrap().contains("Waiting"),
        "{view}"
    );

    // Freeing the slot lets the waiting proxy start.
    assert_eq!(
        http.call("POST", &format!("/destroy/{first}"), "/destroy/{id}", None)
            .await
            .status,
        200
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually("the second proxy's Pod", async || {
        pods.get_opt(&second).await.unwrap()
    })
    .await;

    // A failing Pod shows as failed.
    let failed =
        json!({"status": {"phase": "Failed", "reason": "Error", "message": "gluetun exited 1"}});
    pods.patch_status(&second, &PatchParams::default(), &Patch::Merge(&failed))
        .await
        .unwrap();
    let (state, view) = proxy_state(&http, &second).await;
    assert_eq!(state, "failed");
    assert!(
        view["message"]
            .as_str()
            .unwrap()
            .contains("gluetun exited 1"),
        "{view}"
    );

    // A Mask deleted behind the API's back shows as failed, and DELETE still works.
    Api::<Mask>::namespaced(client.clone(), &ns)
        .delete(&second, &DeleteParams::background())
        .await
        .unwrap();
    let view = eventually("the proxy to notice its Mask is gone", async || {
        let (state, view) = proxy_state(&http, &second).await;
        (state == "failed" && view.get("mask_phase").is_none()).then_some(view)
    })
    .await;
    assert!(
        view["message"]
            .as_str()
            .unwrap()
            .contains("deleted outside"),
        "{view}"
    );
    assert_eq!(
        http.call(
            "DELETE",
            &format!("/proxies/{second}"),
            "/proxies/{id}",
            None
        )
        .await
        .status,
        200
    );

    // No provider for the tag: failed with the controller's reason.
    let reply = http
        .call(
            "POST",
            "/proxies",
            "/proxies",
            Some(json!({"providers": ["nobody-has-this-tag"]})),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let view = eventually("ErrNoProviders", async || {
        let (state, view) = proxy_state(&http, &id).await;
        (state == "failed").then_some(view)
    })
    .await;
    assert_eq!(view["mask_phase"], "ErrNoProviders");
}

/// Writes the Pod status a kubelet would report (merge patch of `status`).
async fn kubelet_reports(pods: &Api<Pod>, name: &str, status: Value) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
}

/// An RFC 3339 time `secs` seconds ago.
fn ago(secs: i64) -> String {
    (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .to_string()
}

#[tokio::test]
async fn unrunnable_proxy_pods_say_why() {
    let Some((client, ns)) = setup("api-kubelet").await else {
        return;
    };
    let _ctl = Controller::start(&client, &ns);
    create_provider(&client, &ns, "mullvad-k", 1).await;
    let mut config = ApiConfig::new(testdata_catalog(), TokenSet::new([TOKEN]), &ns);
    config.template = vpno_server::PodTemplate {
        image_pull_policy: Some(vpno_server::ImagePullPolicy::Never),
        ..vpno_server::PodTemplate::new("localhost/no-such-gluetun:dev", 8888)
    };
    let (_api, http) = start_api_with(&client, config).await;
    let reply = http
        .call(
            "POST",
            "/proxies",
            "/proxies",
            Some(json!({"provider": "mullvad"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = eventually("the proxy Pod", async || pods.get_opt(&id).await.unwrap()).await;
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("localhost/no-such-gluetun:dev")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    let name = container.name.clone();
    let waiting = |reason: &str, message: &str| {
        json!([{
            "name": name, "image": "localhost/no-such-gluetun:dev", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }])
    };

    // Not schedulable: starting, with the scheduler's words.
    kubelet_reports(
        &pods,
        &id,
        json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory.",
            "lastTransitionTime": ago(5),
        }]}),
    )
    .await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "starting", "{view}");
    let message = view["message"].as_str().unwrap();
    assert!(
        message.contains("Unschedulable") && message.contains("Insufficient memory"),
        "{view}"
    );

    // The image cannot be pulled: starting with the kubelet's reason and message ...
    let pull_error = "rpc error: code = Unknown desc = failed to pull and unpack image";
    let ready_false = |since: i64| {
        json!([
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": ago(since)},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
             "lastTransitionTime": ago(since)},
        ])
    };
    kubelet_reports(
        &pods,
        &id,
        json!({"phase": "Pending", "conditions": ready_false(20),
               "containerStatuses": waiting("ErrImagePull", pull_error)}),
    )
    .await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "starting", "{view}");
    let message = view["message"].as_str().unwrap();
    assert!(
        message.contains("ErrImagePull") && message.contains(pull_error),
        "{view}"
    );
    // ... and failed once it has lasted longer than the kubelet is given.
    kubelet_reports(
        &pods,
        &id,
        json!({"conditions": ready_false(600),
               "containerStatuses": waiting("ImagePullBackOff", "Back-off pulling image")}),
    )
    .await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "failed", "{view}");
    assert!(
        view["message"]
            .as_str()
            .unwrap()
            .contains("ImagePullBackOff"),
        "{view}"
    );

    // Never pulled and not on the node: failed at once, whatever the age.
    kubelet_reports(
        &pods,
        &id,
        json!({"conditions": ready_false(1),
               "containerStatuses": waiting("ErrImageNeverPull",
                   "Container image \"localhost/no-such-gluetun:dev\" is not present with pull policy of Never")}),
    )
    .await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "failed", "{view}");
    let message = view["message"].as_str().unwrap();
    assert!(
        message.contains("ErrImageNeverPull") && message.contains("is not present"),
        "{view}"
    );
    // Listed the same way.
    let list = http.get("/proxies", "/proxies").await;
    assert_eq!(list.body["proxies"][0]["state"], "failed", "{}", list.body);

    // A crash loop quotes the container's last words.
    let mut crash = waiting(
        "CrashLoopBackOff",
        "back-off 10s restarting failed container",
    );
    crash[0]["restartCount"] = json!(2);
    crash[0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "message": "ERROR VPN settings: provider is not valid",
        "startedAt": ago(12), "finishedAt": ago(11),
    }});
    kubelet_reports(
        &pods,
        &id,
        json!({"phase": "Running", "conditions": ready_false(30), "containerStatuses": crash}),
    )
    .await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "starting", "{view}");
    let message = view["message"].as_str().unwrap();
    assert!(
        message.contains("CrashLoopBackOff")
            && message.contains("last exit code 1")
            && message.contains("provider is not valid"),
        "{view}"
    );

    // Recovered: ready.
    run_pod(&client, &ns, &id, "10.0.0.9").await;
    let mut running = crash.clone();
    running[0]["state"] = json!({"running": {"startedAt": ago(1)}});
    running[0]["ready"] = json!(true);
    kubelet_reports(&pods, &id, json!({"containerStatuses": running})).await;
    let (state, view) = proxy_state(&http, &id).await;
    assert_eq!(state, "ready", "{view}");
}

#[tokio::test]
async fn max_proxies_holds_across_two_replicas() {
    let Some((client, ns)) = setup("api-limit").await else {
        return;
    };
    let (_a, http_a) = start_api(&client, &ns, Some(5)).await;
    let (_b, http_b) = start_api(&client, &ns, Some(5)).await;
    let mut requests = Vec::new();
    for i in 0..50 {
        let http = if i % 2 == 0 {
            http_a.clone()
        } else {
            http_b.clone()
        };
        requests.push(tokio::spawn(async move {
            let body = json!({"provider": "mullvad", "country": ["Sweden"]});
            http.call("POST", "/proxies", "/proxies", Some(body)).await
        }));
    }
    let mut created = Vec::new();
    let mut refused = 0;
    for r in requests {
        let reply = r.await.unwrap();
        match reply.status {
            201 => created.push(reply.body["id"].as_str().unwrap().to_owned()),
            429 => {
                assert_eq!(reply.body["error"], "too_many_proxies");
                assert!(
                    reply.body["message"]
                        .as_str()
                        .unwrap()
                        .contains("limit of 5"),
                    "{}",
                    reply.body
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!((created.len(), refused), (5, 45));
    for http in [&http_a, &http_b] {
        assert_eq!(http.get("/proxies", "/proxies").await.body["total"], 5);
    }
    let masks = Api::<Mask>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(masks.items.len(), 5);
    let leases = Api::<Lease>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(leases.items.len(), 5);
    let records = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("vpn.beebs.dev/proxy"))
        .await
        .unwrap();
    assert_eq!(
        records.items.len(),
        5,
        "refused requests leave no record behind"
    );

    // Deleting one frees its slot for the next request.
    assert_eq!(
        http_b
            .call(
                "DELETE",
                &format!("/proxies/{}", created[0]),
                "/proxies/{id}",
                None
            )
            .await
            .status,
        200
    );
    let reply = http_a
        .call("POST", "/proxies", "/proxies", Some(json!({})))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        http_a
            .call("POST", "/proxies", "/proxies", Some(json!({})))
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn proxies_survive_an_api_restart() {
    let Some((client, ns)) = setup("api-restart").await else {
        return;
    };
    let (api, http) = start_api(&client, &ns, Some(10)).await;
    let mut before = BTreeMap::new();
    for country in ["Sweden", "Germany", "Switzerland"] {
        let reply = http
            .call(
                "POST",
                "/proxies",
                "/proxies",
                Some(json!({"country": [country]})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        before.insert(
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["credentials"].clone(),
        );
    }
    drop(api);
    assert!(
        tokio::net::TcpStream::connect(http.base.trim_start_matches("http://"))
            .await
            .is_err(),
        "old instance gone"
    );

    let (_api2, http2) = start_api(&client, &ns, Some(10)).await;
    let list = http2.get("/proxies", "/proxies").await;
    let ids: Vec<String> = list.body["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        before.keys().cloned().collect()
    );
    for (id, creds) in &before {
        let (_, view) = proxy_state(&http2, id).await;
        assert_eq!(
            &view["credentials"], creds,
            "credentials survive the restart"
        );
        assert_eq!(view["request"]["country"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn auth_and_bad_inputs_with_kubernetes() {
    let Some((client, ns)) = setup("api-bad").await else {
        return;
    };
    let (_api, http) = start_api(&client, &ns, Some(3)).await;
    let anonymous = http.with_token(None);
    assert_eq!(
        anonymous
            .call("POST", "/proxies", "/proxies", Some(json!({})))
            .await
            .status,
        401
    );
    assert_eq!(anonymous.get("/proxies", "/proxies").await.status, 401);

    // Values outside the catalog (schema-invalid: not in the document's
    // enums) are 400s; catalog values that no server has together are 409s.
    for (body, status, error) in [
        (json!({"provider": "nordvpn"}), 400, "unknown_filter_value"),
        (
            json!({"provider": "mullvad", "country": ["Narnia"]}),
            400,
            "unknown_filter_value",
        ),
        (
            json!({"provider": "mullvad", "country": ["Switzerland"]}),
            409,
            "no_matching_server",
        ),
        (
            json!({"provider": "mullvad", "hostname": ["ch-01.protonvpn.net"]}),
            409,
            "no_matching_server",
        ),
        (
            json!({"country": ["Sweden"], "city": ["Zurich"]}),
            409,
            "no_matching_server",
        ),
        (json!({"vpn": "ipsec"}), 400, "bad_request"),
        (json!({"providers": [""]}), 400, "bad_request"),
        (json!({"providers": ["  "]}), 400, "bad_request"),
    ] {
        let reply = http
            .call("POST", "/proxies", "/proxies", Some(body.clone()))
            .await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (status, Some(error)),
            "{body}: {}",
            reply.body
        );
    }
    assert_eq!(
        http.raw(
            "POST",
            "/proxies",
            Some("application/json"),
            Some(b"{{".to_vec())
        )
        .await
        .status,
        400
    );

    // Ids that are not proxies are 404s, even when a Secret of that name exists.
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("px-foreign".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    for id in [
        "px-foreign",
        "px-doesnotexist",
        "default-token",
        "..%2F..%2Fetc",
    ] {
        let reply = http.get(&format!("/proxies/{id}"), "/proxies/{id}").await;
        assert_eq!(reply.status, 404, "{id}: {}", reply.body);
        assert_eq!(
            http.call("DELETE", &format!("/proxies/{id}"), "/proxies/{id}", None)
                .await
                .status,
            404
        );
    }
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("px-foreign")
            .await
            .unwrap()
            .is_some()
    );
    // Nothing of the refused requests was left behind.
    assert_eq!(http.get("/proxies", "/proxies").await.body["total"], 0);
    let masks = Api::<Mask>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(masks.items.is_empty());
}

#[tokio::test]
async fn losing_the_vpn_slot_stops_the_proxy() {
    let Some((client, ns)) = setup("api-slot-lost").await else {
        return;
    };
    let _ctl = Controller::start(&client, &ns);
    create_provider(&client, &ns, "mullvad-gone", 1).await;
    let (_api, http) = start_api(&client, &ns, None).await;
    let reply = http
        .call(
            "POST",
            "/proxies",
            "/proxies",
            Some(json!({"provider": "mullvad"})),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually("the proxy Pod", async || pods.get_opt(&id).await.unwrap()).await;
    run_pod(&client, &ns, &id, "10.244.0.9").await;
    assert_eq!(proxy_state(&http, &id).await.0, "ready");

    // The provider goes away: no Pod may keep using its credentials.
    Api::<MaskProvider>::namespaced(client.clone(), &ns)
        .delete("mullvad-gone", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the proxy Pod to be removed", async || {
        pods.get_opt(&id).await.unwrap().is_none().then_some(())
    })
    .await;
    let view = eventually("the proxy to report the lost slot", async || {
        let (state, view) = proxy_state(&http, &id).await;
        (state == "failed" && view["mask_phase"] == "ErrNoProviders").then_some(view)
    })
    .await;
    assert!(view.get("pod_ip").is_none(), "{view}");
}

#[tokio::test]
async fn tokens_come_from_a_file_and_a_secret() {
    let Some((client, ns)) = setup("api-tokens").await else {
        return;
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("api-tokens".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "ci".to_owned(),
                ByteString(b"from-secret-1\n# comment\nfrom-secret-2\n".to_vec()),
            ),
            ("web".to_owned(), ByteString(b"from-secret-3".to_vec())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let file = std::env::temp_dir().join(format!("vpno-api-tokens-{}", std::process::id()));
    std::fs::write(&file, "from-file\n").unwrap();
    let tokens =
        vpno_server::load_tokens(Some(&file), Some("api-tokens"), Some(&client), &ns).await;
    let _ = std::fs::remove_file(&file);
    let tokens = tokens.unwrap();
    assert_eq!(tokens.len(), 4);
    for t in [
        "from-file",
        "from-secret-1",
        "from-secret-2",
        "from-secret-3",
    ] {
        assert!(tokens.accepts(t.as_bytes()), "{t}");
    }
    assert!(!tokens.accepts(b"# comment"));
    let missing = vpno_server::load_tokens(None, Some("no-such-secret"), Some(&client), &ns)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no-such-secret"), "{missing}");

    // An instance with these tokens accepts a Secret token and refuses others.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = vpno_server::start(
        ApiConfig::new(testdata_catalog(), tokens, &ns),
        Some(client.clone()),
        listener,
    )
    .await
    .unwrap();
    let http = ApiClient::new(api.url(), Some("from-secret-3".into())).await;
    assert_eq!(http.get("/proxies", "/proxies").await.status, 200);
    assert_eq!(
        http.with_token(Some("from-secret"))
            .get("/proxies", "/proxies")
            .await
            .status,
        401
    );
}
