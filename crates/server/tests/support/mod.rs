//! Shared by the HTTP test binaries: a client for a running API instance that
//! checks every response against the instance's own `/openapi.json`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The synthetic catalog shipped with vpno-catalog (manifest layout).
pub fn testdata_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../catalog/testdata/manifest")
}

/// The same catalog as one legacy `servers.json`, parsed (for independent expectations).
pub fn raw_testdata() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../catalog/testdata/single-file/servers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Counts raw servers matching `pred(provider, server)`.
pub fn scan(raw: &Value, pred: impl Fn(&str, &Value) -> bool) -> usize {
    raw.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "version")
        .map(|(name, block)| {
            block["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| pred(name, s))
                .count()
        })
        .sum()
}

/// Validates responses against an OpenAPI 3.1 document.
pub struct OpenApiValidator {
    doc: Value,
}

/// Makes every object schema with `properties` closed, so an undocumented
/// field in a response fails validation too.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in map.values_mut() {
                close_objects(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl OpenApiValidator {
    /// Wraps a fetched document.
    pub fn new(mut doc: Value) -> Self {
        close_objects(&mut doc["components"]);
        OpenApiValidator { doc }
    }

    /// The document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Panics unless `status` is documented for `method template` and `body`
    /// matches its schema.
    pub fn check(&self, method: &str, template: &str, status: u16, body: &Value) {
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template}: status {status} is not documented; body {body}"
        );
        let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
            panic!("{method} {template} {status}: no JSON schema documented");
        };
        let mut schema = Value::Object(schema.clone());
        close_objects(&mut schema);
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| {
            panic!("{method} {template} {status}: schema does not compile: {e}")
        });
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: body {body} violates the schema: {errors:#?}"
        );
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: hyper::HeaderMap,
}

/// An HTTP client for one API instance.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
    pub validator: Arc<OpenApiValidator>,
}

impl ApiClient {
    /// Connects to `base` and fetches its OpenAPI document.
    pub async fn new(base: String, token: Option<String>) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let mut client = ApiClient {
            base,
            token,
            http,
            validator: Arc::new(OpenApiValidator::new(Value::Null)),
        };
        let doc = client.raw("GET", "/openapi.json", None, None).await;
        assert_eq!(doc.status, 200);
        assert!(
            doc.body["openapi"].as_str().unwrap().starts_with("3."),
            "OpenAPI 3 document"
        );
        client.validator = Arc::new(OpenApiValidator::new(doc.body));
        client
    }

    /// The same instance with another token.
    pub fn with_token(&self, token: Option<&str>) -> Self {
        ApiClient {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// Sends a request with an arbitrary body and content type; no validation.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.http.request(request),
        )
        .await
        .expect("request timed out")
        .expect("request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: non-JSON body ({e}): {bytes:?}"))
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    /// `GET path` without auth, body as text.
    pub async fn text(&self, path: &str) -> String {
        let request = hyper::Request::get(format!("{}{}", self.base, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    /// Sends a JSON request and validates the answer against `template`'s documentation.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> Reply {
        let reply = match body {
            Some(b) => {
                self.raw(
                    method,
                    path,
                    Some("application/json"),
                    Some(serde_json::to_vec(&b).unwrap()),
                )
                .await
            }
            None => self.raw(method, path, None, None).await,
        };
        self.validator
            .check(method, template, reply.status, &reply.body);
        if reply.status >= 400 {
            assert!(
                reply.body["error"].is_string() && reply.body["message"].is_string(),
                "error body: {}",
                reply.body
            );
        }
        reply
    }

    /// `GET path` validated against `template`.
    pub async fn get(&self, path: &str, template: &str) -> Reply {
        self.call("GET", path, template, None).await
    }
}
