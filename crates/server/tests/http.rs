//! The API without Kubernetes, over a real loopback listener: catalog
//! endpoints, auth, errors, body limits, refresh, OpenAPI conformance.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{ApiClient, raw_testdata, scan, testdata_catalog};
use vpno_server::{ApiConfig, RunningApi, TokenSet};

const TOKEN: &str = "test-token-0123456789";

async fn start(catalog: PathBuf) -> (RunningApi, ApiClient) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ApiConfig::new(catalog, TokenSet::new([TOKEN, "second-token"]), "unused");
    config.body_limit = 4096;
    let api = vpno_server::start(config, None, listener).await.unwrap();
    let client = ApiClient::new(api.url(), Some(TOKEN.into())).await;
    (api, client)
}

fn hostnames(reply: &Value) -> Vec<String> {
    reply["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}/{}", s["provider"], s["ips"][0]))
        .collect()
}

#[tokio::test]
async fn openapi_documents_every_endpoint_and_health_is_public() {
    let (_api, client) = start(testdata_catalog()).await;
    let doc = client.validator.doc().clone();
    for (path, method) in [
        ("/health", "get"),
        ("/servers", "get"),
        ("/locations", "get"),
        ("/servers/refresh", "post"),
        ("/proxies", "post"),
        ("/proxies", "get"),
        ("/proxies/{id}", "get"),
        ("/proxies/{id}", "delete"),
        ("/start", "post"),
        ("/status", "get"),
        ("/status/{id}", "get"),
        ("/destroy/{id}", "delete"),
        ("/destroy/{id}", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from /openapi.json"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let anonymous = client.with_token(None);
    let health = anonymous.get("/health", "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["servers"], scan(&raw_testdata(), |_, _| true));
    assert_eq!(health.body["proxies_enabled"], false);
}

#[tokio::test]
async fn every_protected_endpoint_needs_a_valid_token() {
    let (_api, client) = start(testdata_catalog()).await;
    let cases = [
        ("GET", "/servers", "/servers"),
        ("GET", "/locations", "/locations"),
        ("POST", "/servers/refresh", "/servers/refresh"),
        ("GET", "/proxies", "/proxies"),
        ("POST", "/proxies", "/proxies"),
        ("GET", "/proxies/px-abc", "/proxies/{id}"),
        ("DELETE", "/proxies/px-abc", "/proxies/{id}"),
        ("POST", "/start", "/start"),
        ("GET", "/status", "/status"),
        ("GET", "/status/px-abc", "/status/{id}"),
        ("DELETE", "/destroy/px-abc", "/destroy/{id}"),
        ("POST", "/destroy/px-abc", "/destroy/{id}"),
    ];
    for token in [None, Some("wrong"), Some("test-token-012345678")] {
        let c = client.with_token(token);
        for (method, path, template) in cases {
            let body = (method == "POST").then(|| json!({}));
            let reply = c.call(method, path, template, body).await;
            assert_eq!(reply.status, 401, "{method} {path} with {token:?}");
            assert_eq!(reply.body["error"], "unauthorized");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    // A second configured token works; proxies answer 503 without Kubernetes.
    let other = client.with_token(Some("second-token"));
    assert_eq!(other.get("/servers", "/servers").await.status, 200);
    let reply = other.get("/proxies", "/proxies").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("without Kubernetes")
    );
}

#[tokio::test]
async fn server_filters_match_the_raw_data() {
    let (_api, client) = start(testdata_catalog()).await;
    let raw = raw_testdata();
    let lower = |s: &Value, f: &str| s[f].as_str().map(str::to_lowercase);
    type Pred<'a> = Box<dyn Fn(&str, &Value) -> bool + 'a>;
    let cases: Vec<(&str, Pred<'_>)> = vec![
        ("", Box::new(|_, _| true)),
        (
            "country=sweden",
            Box::new(|_, s| lower(s, "country").as_deref() == Some("sweden")),
        ),
        (
            "provider=MULLVAD&vpn=wireguard",
            Box::new(|p, s| p == "mullvad" && s["vpn"] == "wireguard"),
        ),
        (
            "provider=private%20internet%20access&port_forward=true",
            Box::new(|p, s| p == "private internet access" && s["port_forward"] == true),
        ),
        (
            "city=Stockholm&city=Washington%2C%20DC",
            Box::new(|_, s| {
                matches!(
                    lower(s, "city").as_deref(),
                    Some("stockholm" | "washington, dc")
                )
            }),
        ),
        (
            "region=europe&premium=true&stream=false",
            Box::new(|_, s| {
                lower(s, "region").as_deref() == Some("europe")
                    && s["premium"] == true
                    && s["stream"] != true
            }),
        ),
        (
            "hostname=SE-STO-WG-001",
            Box::new(|_, s| s["hostname"] == "se-sto-wg-001"),
        ),
        ("owned=true", Box::new(|_, s| s["owned"] == true)),
        ("free=true", Box::new(|_, s| s["free"] == true)),
        (
            "secure_core=true",
            Box::new(|_, s| s["secure_core"] == true),
        ),
        ("tor=1", Box::new(|_, s| s["tor"] == true)),
        (
            "vpn=openvpn",
            Box::new(|_, s| s["vpn"].as_str().unwrap_or("openvpn") == "openvpn"),
        ),
    ];
    for (query, pred) in &cases {
        let want = scan(&raw, pred);
        let reply = client
            .get(&format!("/servers?{query}&limit=1000"), "/servers")
            .await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        assert_eq!(reply.body["total"], want, "{query}");
        assert_eq!(
            reply.body["servers"].as_array().unwrap().len(),
            want,
            "{query}"
        );
        assert!(want > 0, "{query} should select something");
    }
    // Valid values that exclude each other: an empty page, not an error.
    let reply = client
        .get("/servers?provider=mullvad&country=Switzerland", "/servers")
        .await;
    assert_eq!((reply.status, reply.body["total"].as_u64()), (200, Some(0)));
}

#[tokio::test]
async fn paging_walks_the_whole_result_once() {
    let (_api, client) = start(testdata_catalog()).await;
    let all = client.get("/servers?limit=1000", "/servers").await;
    let total = all.body["total"].as_u64().unwrap() as usize;
    let mut pages = Vec::new();
    let mut offset = 0;
    while offset < total + 3 {
        let page = client
            .get(&format!("/servers?limit=3&offset={offset}"), "/servers")
            .await;
        assert_eq!(page.body["total"].as_u64().unwrap() as usize, total);
        assert_eq!(
            (page.body["limit"].as_u64(), page.body["offset"].as_u64()),
            (Some(3), Some(offset as u64))
        );
        pages.extend(hostnames(&page.body));
        offset += 3;
    }
    assert_eq!(pages, hostnames(&all.body));
    assert_eq!(client.get("/servers", "/servers").await.body["limit"], 100);
}

#[tokio::test]
async fn locations_count_every_server_once() {
    let (_api, client) = start(testdata_catalog()).await;
    let raw = raw_testdata();
    let reply = client.get("/locations", "/locations").await;
    assert_eq!(reply.status, 200);
    let tree = &reply.body["providers"];
    let sum: u64 = tree
        .as_object()
        .unwrap()
        .values()
        .flat_map(|c| c.as_object().unwrap().values())
        .flat_map(|c| c.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(sum as usize, scan(&raw, |_, _| true));
    assert_eq!(reply.body["total"].as_u64(), Some(sum));
    let sto = scan(&raw, |p, s| {
        p == "mullvad" && s["country"] == "Sweden" && s["city"] == "Stockholm"
    });
    assert_eq!(tree["mullvad"]["Sweden"]["Stockholm"], sto);
    let pia = scan(&raw, |p, _| p == "private internet access");
    assert_eq!(
        tree["private internet access"]["(unknown)"]["(unknown)"],
        pia
    );
    let filtered = client
        .get("/locations?provider=protonvpn&vpn=wireguard", "/locations")
        .await;
    assert_eq!(filtered.body["providers"].as_object().unwrap().len(), 1);
    assert_eq!(
        filtered.body["total"],
        scan(&raw, |p, s| p == "protonvpn" && s["vpn"] == "wireguard")
    );
    assert_eq!(
        client.get("/locations?limit=5", "/locations").await.status,
        400
    );
}

#[tokio::test]
async fn bad_inputs_are_4xx_json_never_5xx() {
    let (_api, client) = start(testdata_catalog()).await;
    let reply = client.get("/servers?country=Narnia", "/servers").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"], "unknown_filter_value");
    let valid: Vec<&str> = reply.body["valid_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        valid.contains(&"Sweden") && valid.contains(&"Switzerland"),
        "{valid:?}"
    );
    for query in [
        "vpn=ipsec",
        "provider=nordvpn",
        "tor=perhaps",
        "limit=0",
        "limit=5000",
        "offset=x",
        "colour=red",
        "city=",
    ] {
        let reply = client.get(&format!("/servers?{query}"), "/servers").await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
    }
    // Unknown paths and methods.
    let reply = client.raw("GET", "/nope", None, None).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let reply = client.raw("PUT", "/servers", None, None).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // Bodies: malformed, wrong type, unknown field, oversized, wrong shapes.
    let post = |ct: Option<&'static str>, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let reply = client.raw("POST", "/proxies", ct, Some(body)).await;
            client
                .validator
                .check("POST", "/proxies", reply.status, &reply.body);
            reply
        }
    };
    let json_ct = Some("application/json");
    assert_eq!(post(json_ct, b"{\"provider\": ".to_vec()).await.status, 400);
    assert_eq!(
        post(json_ct, b"not json".to_vec()).await.body["error"],
        "malformed_json"
    );
    assert_eq!(post(Some("text/plain"), b"{}".to_vec()).await.status, 415);
    assert_eq!(post(None, b"{}".to_vec()).await.status, 415);
    assert_eq!(
        post(json_ct, br#"{"colour":"red"}"#.to_vec()).await.status,
        422
    );
    assert_eq!(
        post(json_ct, br#"{"country":"Sweden"}"#.to_vec())
            .await
            .status,
        422
    );
    assert_eq!(post(json_ct, br#"[1,2]"#.to_vec()).await.status, 422);
    let huge = format!(r#"{{"providers":["{}"]}}"#, "x".repeat(10_000));
    let reply = post(json_ct, huge.into_bytes()).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    // The same rules on the alias.
    let reply = client
        .raw("POST", "/start", json_ct, Some(b"{".to_vec()))
        .await;
    assert_eq!(reply.status, 400);
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn refresh_reloads_and_keeps_the_old_catalog_on_failure() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("vpno-server-refresh-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    copy_dir(&testdata_catalog(), &dir.0);
    let (_api, client) = start(dir.0.clone()).await;
    let raw = raw_testdata();
    let before = client.get("/servers?limit=1", "/servers").await.body["total"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(before, scan(&raw, |_, _| true));

    // Drop protonvpn from the manifest: a refresh serves one provider fewer.
    let manifest_path = dir.0.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("protonvpn");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let reply = client
        .call("POST", "/servers/refresh", "/servers/refresh", None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["layout"], "manifest");
    let after = scan(&raw, |p, _| p != "protonvpn");
    assert_eq!(reply.body["servers"], after);
    assert_eq!(
        client.get("/servers?limit=1", "/servers").await.body["total"],
        after
    );
    assert_eq!(
        client
            .get("/servers?provider=protonvpn", "/servers")
            .await
            .status,
        400
    );

    // A broken file: refresh fails loudly, the previous catalog stays.
    std::fs::write(&manifest_path, b"{broken").unwrap();
    let reply = client
        .call("POST", "/servers/refresh", "/servers/refresh", None)
        .await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (500, Some("catalog_reload_failed"))
    );
    assert_eq!(
        client.get("/servers?limit=1", "/servers").await.body["total"],
        after
    );
}

#[tokio::test]
async fn legacy_layout_and_xz_serve_the_same_answers() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../catalog/testdata");
    let (_a, manifest) = start(base.join("manifest")).await;
    let (_b, xz) = start(base.join("single-file-xz")).await;
    for query in [
        "/servers?limit=1000",
        "/servers?country=sweden&limit=1000",
        "/locations",
    ] {
        let template = query.split('?').next().unwrap();
        assert_eq!(
            manifest.get(query, template).await.body,
            xz.get(query, template).await.body,
            "{query}"
        );
    }
}

#[tokio::test]
async fn the_openapi_check_catches_wrong_bodies() {
    let (_api, client) = start(testdata_catalog()).await;
    let good = client.get("/servers?limit=2", "/servers").await.body;
    let validator = client.validator.clone();
    let mut wrong_type = good.clone();
    wrong_type["total"] = json!("many");
    let mut extra_field = good.clone();
    extra_field["servers"][0]["colour"] = json!("red");
    let mut missing = good.clone();
    missing["servers"][0]
        .as_object_mut()
        .unwrap()
        .remove("provider");
    for (what, body, status) in [
        ("wrong type", wrong_type, 200),
        ("undocumented field", extra_field, 200),
        ("missing field", missing, 200),
        ("undocumented status", good.clone(), 418),
    ] {
        let v = validator.clone();
        let result = std::panic::catch_unwind(move || v.check("GET", "/servers", status, &body));
        assert!(result.is_err(), "{what} should fail validation");
    }
    validator.check("GET", "/servers", 200, &good);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let (_api, client) = start(testdata_catalog()).await;
    for _ in 0..3 {
        assert_eq!(
            client
                .get("/servers?country=sweden", "/servers")
                .await
                .status,
            200
        );
    }
    client
        .with_token(None)
        .get("/proxies/px-secretid42", "/proxies/{id}")
        .await;
    let text = client.text("/metrics").await;
    assert!(
        text.contains(r#"vpno_http_requests_total{method="GET",route="/servers",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/proxies/{id}",status="401""#),
        "{text}"
    );
    assert!(!text.contains("px-secretid42"), "no concrete ids in labels");
    assert!(text.contains("vpno_http_request_duration_seconds_bucket"));
}
