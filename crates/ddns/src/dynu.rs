//! Dynu's API v2: `GET /dns/getroot/{hostname}` finds the domain and node
//! of the name, `GET /dns/{id}/record` lists its records, and records are
//! created (`POST /dns/{id}/record`), updated (`POST
//! /dns/{id}/record/{recordId}`) and deleted (`DELETE ...`) until the node's A
//! records are exactly the desired set. Authenticated with the account's
//! API key (`API-Key` header).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::http::{HttpClient, check_hostname};
use crate::plan::{RecordOp, record_ops};
use crate::{DdnsError, DnsUpdater, Secret};

/// The public API's base URL.
pub const API_URL: &str = "https://api.dynu.com/v2";

/// Account and record settings.
#[derive(Debug, Clone)]
pub struct DynuConfig {
    /// Base URL ([`API_URL`]; tests point it at a local server).
    pub api_url: String,
    /// The account's API key.
    pub api_key: Secret,
    /// TTL in seconds.
    pub ttl: u32,
    /// Time per request.
    pub timeout: Duration,
}

/// A [`DnsUpdater`] on Dynu's API.
#[derive(Debug)]
pub struct DynuUpdater {
    config: DynuConfig,
    http: HttpClient,
}

/// Where a host name lives at Dynu.
struct Node {
    domain_id: u64,
    node: String,
}

impl DynuUpdater {
    /// Builds the client.
    pub fn new(config: DynuConfig) -> Result<Self, DdnsError> {
        let http = HttpClient::new(config.timeout)?;
        Ok(DynuUpdater { config, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_url.trim_end_matches('/'))
    }

    /// One call; Dynu reports errors as a non-2xx status with `type` and `message`.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, DdnsError> {
        let headers = [("api-key", self.config.api_key.expose())];
        let (status, v) = self.http.json(method, url, &headers, body).await?;
        let code = v["statusCode"]
            .as_u64()
            .unwrap_or(u64::from(status.as_u16()));
        if status.is_success() && (200..300).contains(&code) {
            return Ok(v);
        }
        let reason = format!(
            "HTTP {status}: {} {}",
            v["type"].as_str().unwrap_or(""),
            v["message"].as_str().unwrap_or("")
        );
        Err(DdnsError::Refused {
            server: url.to_owned(),
            reason: reason.trim_end().to_owned(),
        })
    }

    async fn node(&self, name: &str) -> Result<Node, DdnsError> {
        let url = self.url(&format!("/dns/getroot/{name}"));
        let v = self.call(Method::GET, &url, None).await?;
        let domain_id = v["id"].as_u64().ok_or_else(|| DdnsError::Protocol {
            server: url.clone(),
            reason: "no domain id for the host name".into(),
        })?;
        Ok(Node {
            domain_id,
            node: v["node"].as_str().unwrap_or("").to_owned(),
        })
    }

    async fn records(&self, node: &Node) -> Result<Vec<(u64, Ipv4Addr)>, DdnsError> {
        let url = self.url(&format!("/dns/{}/record", node.domain_id));
        let v = self.call(Method::GET, &url, None).await?;
        let list = v["dnsRecords"]
            .as_array()
            .ok_or_else(|| DdnsError::Protocol {
                server: url.clone(),
                reason: "no dnsRecords list".into(),
            })?;
        Ok(list
            .iter()
            .filter(|r| r["recordType"] == "A" && r["nodeName"].as_str().unwrap_or("") == node.node)
            .filter_map(|r| Some((r["id"].as_u64()?, r["ipv4Address"].as_str()?.parse().ok()?)))
            .collect())
    }

    fn body(&self, node: &Node, addr: Ipv4Addr) -> Value {
        json!({ "nodeName": node.node, "recordType": "A", "ttl": self.config.ttl, "state": true, "group": "", "ipv4Address": addr.to_string() })
    }

    async fn apply(&self, node: &Node, ops: Vec<RecordOp<u64>>) -> Result<(), DdnsError> {
        let base = self.url(&format!("/dns/{}/record", node.domain_id));
        for op in ops {
            match op {
                RecordOp::Update(id, addr) => {
                    self.call(
                        Method::POST,
                        &format!("{base}/{id}"),
                        Some(&self.body(node, addr)),
                    )
                    .await?
                }
                RecordOp::Create(addr) => {
                    self.call(Method::POST, &base, Some(&self.body(node, addr)))
                        .await?
                }
                RecordOp::Delete(id) => {
                    self.call(Method::DELETE, &format!("{base}/{id}"), None)
                        .await?
                }
            };
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DnsUpdater for DynuUpdater {
    async fn current(&self, name: &str) -> Result<BTreeSet<Ipv4Addr>, DdnsError> {
        let node = self.node(&check_hostname(name)?).await?;
        Ok(self
            .records(&node)
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    async fn set(&self, name: &str, addresses: &BTreeSet<Ipv4Addr>) -> Result<(), DdnsError> {
        let node = self.node(&check_hostname(name)?).await?;
        let current = self.records(&node).await?;
        self.apply(&node, record_ops(&current, addresses)).await
    }

    async fn remove(&self, name: &str) -> Result<(), DdnsError> {
        let node = self.node(&check_hostname(name)?).await?;
        let current = self.records(&node).await?;
        self.apply(&node, record_ops(&current, &BTreeSet::new()))
            .await
    }
}
