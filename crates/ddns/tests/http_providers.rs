//! The Cloudflare and Dynu clients against local axum servers that
//! implement the parts of the providers' documented APIs the clients use
//! (list / create / update / delete DNS records, their auth headers and
//! error bodies). The servers keep records in memory; the tests read that
//! state directly, not through the client under test.
#![allow(clippy::result_large_err)] // axum handlers return their error `Response`s early

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use vpno_ddns::cloudflare::{CloudflareConfig, CloudflareUpdater};
use vpno_ddns::dynu::{DynuConfig, DynuUpdater};
use vpno_ddns::{DdnsError, DnsUpdater, Secret};

const TOKEN: &str = "cf-token-0123456789";
const API_KEY: &str = "dynu-key-0123456789";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// One record as either fake keeps it.
#[derive(Debug, Clone)]
struct Rec {
    id: u64,
    name: String,
    rtype: String,
    content: String,
}

#[derive(Default)]
struct Store {
    records: Vec<Rec>,
    next_id: u64,
    calls: Vec<String>,
}

type Shared = Arc<Mutex<Store>>;

impl Store {
    fn a_records(&self, name: &str) -> BTreeSet<Ipv4Addr> {
        self.records
            .iter()
            .filter(|r| r.rtype == "A" && r.name == name)
            .map(|r| r.content.parse().unwrap())
            .collect()
    }
    fn count_a(&self, name: &str) -> usize {
        self.records
            .iter()
            .filter(|r| r.rtype == "A" && r.name == name)
            .count()
    }
    fn add(&mut self, name: &str, rtype: &str, content: &str) -> Rec {
        self.next_id += 1;
        let r = Rec {
            id: self.next_id,
            name: name.into(),
            rtype: rtype.into(),
            content: content.into(),
        };
        self.records.push(r.clone());
        r
    }
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

// ---- Cloudflare API v4 ----

fn cf_error(status: StatusCode, code: u32, message: &str) -> Response {
    (status, Json(json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null })))
        .into_response()
}

fn cf_auth(headers: &HeaderMap, zone: &str) -> Result<(), Response> {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return Err(cf_error(
            StatusCode::FORBIDDEN,
            9109,
            "Invalid access token",
        ));
    }
    if zone != ZONE_ID {
        return Err(cf_error(
            StatusCode::NOT_FOUND,
            7003,
            "Could not route to /zones/..., perhaps your object identifier is invalid?",
        ));
    }
    Ok(())
}

fn cf_record(r: &Rec) -> Value {
    json!({ "id": format!("{:032x}", r.id), "type": r.rtype, "name": r.name, "content": r.content, "ttl": 1, "proxied": false })
}

fn cf_id(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or(0)
}

async fn cf_list(
    State(s): State<Shared>,
    Path(zone): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = cf_auth(&headers, &zone) {
        return e;
    }
    let mut s = s.lock().unwrap();
    s.calls.push(format!(
        "GET page {}",
        q.get("page").map_or("1", |p| p.as_str())
    ));
    let matching: Vec<Rec> = s
        .records
        .iter()
        .filter(|r| {
            q.get("type").is_none_or(|t| *t == r.rtype)
                && q.get("name").is_none_or(|n| *n == r.name)
        })
        .cloned()
        .collect();
    // The fake serves at most 2 records per page, to exercise pagination.
    let per_page = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100usize)
        .min(2);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let total_pages = matching.len().div_ceil(per_page).max(1);
    let result: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(cf_record)
        .collect();
    Json(json!({
        "success": true, "errors": [], "messages": [], "result": result,
        "result_info": { "page": page, "per_page": per_page, "count": result.len(), "total_count": matching.len(), "total_pages": total_pages }
    }))
    .into_response()
}

fn cf_validate(body: &Value) -> Result<(String, String), Response> {
    let (Some("A"), Some(name), Some(content)) = (
        body["type"].as_str(),
        body["name"].as_str(),
        body["content"].as_str(),
    ) else {
        return Err(cf_error(
            StatusCode::BAD_REQUEST,
            9000,
            "DNS record type, name and content required",
        ));
    };
    if content.parse::<Ipv4Addr>().is_err() {
        return Err(cf_error(
            StatusCode::BAD_REQUEST,
            9005,
            "Content for A record must be a valid IPv4 address.",
        ));
    }
    Ok((name.to_owned(), content.to_owned()))
}

async fn cf_create(
    State(s): State<Shared>,
    Path(zone): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(e) = cf_auth(&headers, &zone) {
        return e;
    }
    let (name, content) = match cf_validate(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut s = s.lock().unwrap();
    s.calls.push(format!("POST {content}"));
    if s.records
        .iter()
        .any(|r| r.name == name && r.content == content)
    {
        return cf_error(
            StatusCode::BAD_REQUEST,
            81058,
            "An identical record already exists.",
        );
    }
    let r = s.add(&name, "A", &content);
    Json(json!({ "success": true, "errors": [], "messages": [], "result": cf_record(&r) }))
        .into_response()
}

async fn cf_update(
    State(s): State<Shared>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(e) = cf_auth(&headers, &zone) {
        return e;
    }
    let (name, content) = match cf_validate(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut s = s.lock().unwrap();
    s.calls.push(format!("PUT {content}"));
    let Some(r) = s.records.iter_mut().find(|r| r.id == cf_id(&id)) else {
        return cf_error(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
    };
    r.name = name;
    r.content = content;
    let r = r.clone();
    Json(json!({ "success": true, "errors": [], "messages": [], "result": cf_record(&r) }))
        .into_response()
}

async fn cf_delete(
    State(s): State<Shared>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = cf_auth(&headers, &zone) {
        return e;
    }
    let mut s = s.lock().unwrap();
    s.calls.push("DELETE".into());
    let before = s.records.len();
    s.records.retain(|r| r.id != cf_id(&id));
    if s.records.len() == before {
        return cf_error(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
    }
    Json(json!({ "success": true, "errors": [], "messages": [], "result": { "id": id } }))
        .into_response()
}

fn cloudflare_fake(store: Shared) -> axum::Router {
    axum::Router::new()
        .route(
            "/client/v4/zones/{zone}/dns_records",
            get(cf_list).post(cf_create),
        )
        .route(
            "/client/v4/zones/{zone}/dns_records/{id}",
            put(cf_update).delete(cf_delete),
        )
        .with_state(store)
}

// ---- Dynu API v2 ----

const DYNU_DOMAIN: &str = "example.net";
const DYNU_DOMAIN_ID: u64 = 98765;

fn dynu_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "statusCode": status.as_u16(), "type": kind, "message": message })),
    )
        .into_response()
}

fn dynu_auth(headers: &HeaderMap) -> Result<(), Response> {
    if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return Err(dynu_error(
            StatusCode::UNAUTHORIZED,
            "Authentication Exception",
            "Authentication failed.",
        ));
    }
    Ok(())
}

fn node_of(hostname: &str) -> String {
    hostname
        .strip_suffix(DYNU_DOMAIN)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_owned()
}

fn dynu_record(r: &Rec) -> Value {
    let node = node_of(&r.name);
    json!({
        "id": r.id, "domainId": DYNU_DOMAIN_ID, "domainName": DYNU_DOMAIN, "nodeName": node, "hostname": r.name,
        "recordType": r.rtype, "ttl": 120, "state": true, "content": format!("{} IN {} {}", r.name, r.rtype, r.content),
        "ipv4Address": if r.rtype == "A" { Value::from(r.content.clone()) } else { Value::Null },
    })
}

async fn dynu_root(Path(host): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = dynu_auth(&headers) {
        return e;
    }
    if host != DYNU_DOMAIN && !host.ends_with(&format!(".{DYNU_DOMAIN}")) {
        return dynu_error(
            StatusCode::NOT_IMPLEMENTED,
            "Argument Exception",
            "Invalid hostname.",
        );
    }
    Json(json!({ "statusCode": 200, "id": DYNU_DOMAIN_ID, "domainName": DYNU_DOMAIN, "hostname": host, "node": node_of(&host) }))
        .into_response()
}

fn dynu_domain(id: u64) -> Result<(), Response> {
    if id == DYNU_DOMAIN_ID {
        Ok(())
    } else {
        Err(dynu_error(
            StatusCode::NOT_FOUND,
            "Not Found Exception",
            "Domain not found.",
        ))
    }
}

async fn dynu_list(State(s): State<Shared>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    if let Err(e) = dynu_auth(&headers).and(dynu_domain(id)) {
        return e;
    }
    let s = s.lock().unwrap();
    Json(json!({ "statusCode": 200, "dnsRecords": s.records.iter().map(dynu_record).collect::<Vec<_>>() })).into_response()
}

fn dynu_validate(body: &Value) -> Result<(String, String), Response> {
    let (Some(node), Some("A"), Some(ip)) = (
        body["nodeName"].as_str(),
        body["recordType"].as_str(),
        body["ipv4Address"].as_str(),
    ) else {
        return Err(dynu_error(
            StatusCode::BAD_REQUEST,
            "Validation Exception",
            "nodeName, recordType and ipv4Address required.",
        ));
    };
    if ip.parse::<Ipv4Addr>().is_err() {
        return Err(dynu_error(
            StatusCode::BAD_REQUEST,
            "Validation Exception",
            "Invalid IPv4 address.",
        ));
    }
    let host = if node.is_empty() {
        DYNU_DOMAIN.to_owned()
    } else {
        format!("{node}.{DYNU_DOMAIN}")
    };
    Ok((host, ip.to_owned()))
}

async fn dynu_create(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(e) = dynu_auth(&headers).and(dynu_domain(id)) {
        return e;
    }
    let (host, ip) = match dynu_validate(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut s = s.lock().unwrap();
    s.calls.push(format!("POST {ip}"));
    let r = s.add(&host, "A", &ip);
    let mut v = dynu_record(&r);
    v["statusCode"] = 200.into();
    Json(v).into_response()
}

async fn dynu_update(
    State(s): State<Shared>,
    Path((id, rid)): Path<(u64, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(e) = dynu_auth(&headers).and(dynu_domain(id)) {
        return e;
    }
    let (host, ip) = match dynu_validate(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut s = s.lock().unwrap();
    s.calls.push(format!("UPDATE {ip}"));
    let Some(r) = s.records.iter_mut().find(|r| r.id == rid) else {
        return dynu_error(
            StatusCode::NOT_FOUND,
            "Not Found Exception",
            "DNS record not found.",
        );
    };
    r.name = host;
    r.content = ip;
    let mut v = dynu_record(r);
    v["statusCode"] = 200.into();
    Json(v).into_response()
}

async fn dynu_delete(
    State(s): State<Shared>,
    Path((id, rid)): Path<(u64, u64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = dynu_auth(&headers).and(dynu_domain(id)) {
        return e;
    }
    let mut s = s.lock().unwrap();
    s.calls.push("DELETE".into());
    let before = s.records.len();
    s.records.retain(|r| r.id != rid);
    if s.records.len() == before {
        return dynu_error(
            StatusCode::NOT_FOUND,
            "Not Found Exception",
            "DNS record not found.",
        );
    }
    Json(json!({ "statusCode": 200 })).into_response()
}

fn dynu_fake(store: Shared) -> axum::Router {
    axum::Router::new()
        .route("/v2/dns/getroot/{host}", get(dynu_root))
        .route("/v2/dns/{id}/record", get(dynu_list).post(dynu_create))
        .route(
            "/v2/dns/{id}/record/{rid}",
            post(dynu_update).delete(dynu_delete),
        )
        .with_state(store)
}

// ---- the scenario both run ----

fn addrs(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// Grow, shrink, replace and remove the A records of `name`, checking the
/// fake's state after each step; records of other names and types stay.
async fn scenario(updater: &dyn DnsUpdater, store: &Shared, name: &str) {
    let others_before: Vec<String> = store
        .lock()
        .unwrap()
        .records
        .iter()
        .filter(|r| r.name != name || r.rtype != "A")
        .map(|r| format!("{r:?}"))
        .collect();
    for step in [
        addrs(&["192.0.2.1", "198.51.100.7"]),
        addrs(&["192.0.2.1", "198.51.100.7", "203.0.113.9"]),
        addrs(&["203.0.113.9"]),
        addrs(&["192.0.2.44"]),
        addrs(&["192.0.2.44", "192.0.2.45", "192.0.2.46"]),
    ] {
        updater
            .set(name, &step)
            .await
            .unwrap_or_else(|e| panic!("set {step:?}: {e}"));
        let (held, count) = {
            let s = store.lock().unwrap();
            (s.a_records(name), s.count_a(name))
        };
        assert_eq!(held, step, "the provider holds exactly the set");
        assert_eq!(count, step.len(), "no duplicate records");
        assert_eq!(updater.current(name).await.unwrap(), step);
    }
    updater.remove(name).await.unwrap();
    assert_eq!(store.lock().unwrap().count_a(name), 0);
    let others_after: Vec<String> = store
        .lock()
        .unwrap()
        .records
        .iter()
        .filter(|r| r.name != name || r.rtype != "A")
        .map(|r| format!("{r:?}"))
        .collect();
    assert_eq!(
        others_before, others_after,
        "records of other names and types are untouched"
    );
}

fn assert_refused_without_secret(err: DdnsError, secret: &str, says: &str) {
    let text = err.to_string();
    assert!(matches!(err, DdnsError::Refused { .. }), "{text}");
    assert!(text.contains(says), "{text}");
    assert!(!text.contains(secret), "{text}");
}

#[tokio::test]
async fn cloudflare_sets_exactly_the_given_records() {
    let store: Shared = Default::default();
    {
        let mut s = store.lock().unwrap();
        s.add("other.example.com", "A", "192.0.2.200");
        s.add("gw.example.com", "TXT", "\"keep me\"");
        // A stale duplicate left by someone else: removed on the first write.
        s.add("gw.example.com", "A", "192.0.2.1");
        s.add("gw.example.com", "A", "192.0.2.1");
    }
    let base = serve(cloudflare_fake(store.clone())).await;
    let config = CloudflareConfig {
        api_url: format!("{base}/client/v4"),
        zone_id: ZONE_ID.into(),
        token: Secret::new(TOKEN),
        ttl: 60,
        timeout: Duration::from_secs(5),
    };
    let u = CloudflareUpdater::new(config.clone()).unwrap();
    assert!(!format!("{u:?}").contains(TOKEN));
    assert_eq!(
        u.current("gw.example.com.").await.unwrap(),
        addrs(&["192.0.2.1"])
    );
    scenario(&u, &store, "gw.example.com").await;
    assert!(
        store
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c == "GET page 2"),
        "pagination followed"
    );

    let wrong = CloudflareUpdater::new(CloudflareConfig {
        token: Secret::new("wrong-token-xyz"),
        ..config
    })
    .unwrap();
    let err = wrong
        .set("gw.example.com", &addrs(&["192.0.2.1"]))
        .await
        .unwrap_err();
    assert_refused_without_secret(err, "wrong-token-xyz", "Invalid access token");
    assert!(matches!(
        u.set("gw/../x", &addrs(&["192.0.2.1"])).await,
        Err(DdnsError::Config(_))
    ));
}

#[tokio::test]
async fn dynu_sets_exactly_the_given_records() {
    let store: Shared = Default::default();
    {
        let mut s = store.lock().unwrap();
        s.add("other.example.net", "A", "192.0.2.200");
        s.add("gw.example.net", "TXT", "keep me");
    }
    let base = serve(dynu_fake(store.clone())).await;
    let config = DynuConfig {
        api_url: format!("{base}/v2"),
        api_key: Secret::new(API_KEY),
        ttl: 120,
        timeout: Duration::from_secs(5),
    };
    let u = DynuUpdater::new(config.clone()).unwrap();
    assert!(!format!("{u:?}").contains(API_KEY));
    scenario(&u, &store, "gw.example.net").await;
    assert!(
        store
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.starts_with("UPDATE")),
        "records are reused by update"
    );

    let wrong = DynuUpdater::new(DynuConfig {
        api_key: Secret::new("wrong-key-xyz"),
        ..config.clone()
    })
    .unwrap();
    let err = wrong
        .set("gw.example.net", &addrs(&["192.0.2.1"]))
        .await
        .unwrap_err();
    assert_refused_without_secret(err, "wrong-key-xyz", "Authentication failed.");
    let err = u
        .set("gw.elsewhere.org", &addrs(&["192.0.2.1"]))
        .await
        .unwrap_err();
    assert_refused_without_secret(err, API_KEY, "Invalid hostname.");
}
