//! What the gateway and router agents say about themselves: a gateway's
//! public IP (`GET :9090/public-ip`) and a router's role (`GET :9095/status`),
//! read from their Pod IPs. Fetching is the executor's
//! ([`crate::effect::Executor::fetch_agents`]); parsing is pure.

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use vpno_api::RouterRole;

/// How long one agent may take to answer.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The most of an answer that is read.
const MAX_BODY: usize = 16 * 1024;

/// The URL of a gateway agent's public IP.
pub(crate) fn public_ip_url(pod_ip: &str, port: i32) -> String {
    format!("http://{pod_ip}:{port}/public-ip")
}

/// The URL of a router's status document.
pub(crate) fn router_status_url(pod_ip: &str, port: i32) -> String {
    format!("http://{pod_ip}:{port}/status")
}

/// The public IP in a `/public-ip` answer (an address, nothing else).
pub(crate) fn parse_public_ip(body: &str) -> Option<String> {
    body.trim().parse::<IpAddr>().ok().map(|ip| ip.to_string())
}

/// The role in a router's `/status` answer.
pub(crate) fn parse_router_role(body: &str) -> Option<RouterRole> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    match doc.get("role")?.as_str()? {
        "active" => Some(RouterRole::Active),
        "standby" => Some(RouterRole::Standby),
        _ => None,
    }
}

/// A plain-HTTP client for the agents (they listen on their Pod IP).
#[derive(Clone)]
pub(crate) struct AgentClient(Client<HttpConnector, Empty<Bytes>>);

impl Default for AgentClient {
    fn default() -> Self {
        AgentClient(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl AgentClient {
    /// The body of a 200 answer to `GET url` within the timeout.
    pub(crate) async fn get(&self, url: &str) -> Option<String> {
        let uri: hyper::Uri = url.parse().ok()?;
        let resp = tokio::time::timeout(TIMEOUT, self.0.get(uri))
            .await
            .ok()?
            .ok()?;
        if resp.status() != hyper::StatusCode::OK {
            return None;
        }
        let body =
            tokio::time::timeout(TIMEOUT, Limited::new(resp.into_body(), MAX_BODY).collect())
                .await
                .ok()?
                .ok()?;
        String::from_utf8(body.to_bytes().to_vec()).ok()
    }

    /// The answers to `urls`, fetched concurrently (`None`: no answer).
    pub(crate) async fn get_all(&self, urls: &[String]) -> Vec<Option<String>> {
        futures::future::join_all(urls.iter().map(|u| self.get(u))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(
            parse_public_ip("203.0.113.7\n").as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(parse_public_ip("<html>"), None);
        let status = r#"{"role":"active","priority":200,"vip":"192.168.24.1/22"}"#;
        assert_eq!(parse_router_role(status), Some(RouterRole::Active));
        assert_eq!(
            parse_router_role(r#"{"role":"standby"}"#),
            Some(RouterRole::Standby)
        );
        assert_eq!(parse_router_role("{}"), None);
    }

    #[tokio::test]
    async fn an_agent_on_loopback_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/public-ip",
                axum::routing::get(|| async { "203.0.113.5\n" }),
            )
            .route(
                "/status",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = AgentClient::default();
        let ip = addr.ip().to_string();
        let port = i32::from(addr.port());
        let answers = client
            .get_all(&[public_ip_url(&ip, port), router_status_url(&ip, port)])
            .await;
        server.abort();
        assert_eq!(
            answers[0].as_deref().and_then(parse_public_ip).as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(answers[1], None, "only 200 answers count");
    }

    #[tokio::test]
    async fn a_silent_or_failing_agent_is_no_answer() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = AgentClient::default();
        let answers = client
            .get_all(&[
                format!("http://127.0.0.1:{port}/status"),
                "not a url".into(),
            ])
            .await;
        assert_eq!(answers, [None, None]);
    }
}
