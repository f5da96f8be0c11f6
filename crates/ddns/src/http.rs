//! The one HTTP client of the provider APIs: HTTPS (rustls with ring,
//! the system's CA certificates) or plain HTTP (local test servers), JSON
//! in and out, a timeout per request.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::DdnsError;

/// JSON over HTTP(S) with a per-request timeout.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(timeout: Duration) -> Result<Self, DdnsError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| DdnsError::Config(format!("no CA certificates for HTTPS: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    /// Sends `body` (if any) as JSON with `headers`, returns the status and the JSON answer
    /// (`null` for an empty body). `what` names the call in errors (never a header value).
    pub(crate) async fn json(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), DdnsError> {
        let unreachable = |reason: String| DdnsError::Unreachable {
            server: url.to_owned(),
            reason,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| DdnsError::Config(format!("request to {url}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, DdnsError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        if body.is_empty() {
            return Ok((status, serde_json::Value::Null));
        }
        let value = serde_json::from_slice(&body).map_err(|e| DdnsError::Protocol {
            server: url.to_owned(),
            reason: format!("HTTP {status}, body is not JSON: {e}"),
        })?;
        Ok((status, value))
    }
}

/// Host names the APIs accept: letters, digits, `-`, `_`, `.` (so they
/// can go into URLs unescaped).
pub(crate) fn check_hostname(name: &str) -> Result<String, DdnsError> {
    let n = crate::normalize(name);
    let ok = !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(DdnsError::Config(format!("{name:?} is not a host name")))
    }
}
