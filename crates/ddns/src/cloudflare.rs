//! Cloudflare's API v4 (`/zones/{zone_id}/dns_records`): list the name's A
//! records, then update, create and delete records until they are exactly
//! the desired set. Authenticated with an API token (`Authorization:
//! Bearer`), scoped to `Zone.DNS:Edit` on the one zone.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::http::{HttpClient, check_hostname};
use crate::plan::{RecordOp, record_ops};
use crate::{DdnsError, DnsUpdater, Secret};

/// The public API's base URL.
pub const API_URL: &str = "https://api.cloudflare.com/client/v4";

/// Account and record settings.
#[derive(Debug, Clone)]
pub struct CloudflareConfig {
    /// Base URL ([`API_URL`]; tests point it at a local server).
    pub api_url: String,
    /// The zone's id (Overview page of the zone).
    pub zone_id: String,
    /// API token.
    pub token: Secret,
    /// TTL in seconds (1 = Cloudflare's "automatic").
    pub ttl: u32,
    /// Time per request.
    pub timeout: Duration,
}

/// A [`DnsUpdater`] on Cloudflare's API.
#[derive(Debug)]
pub struct CloudflareUpdater {
    config: CloudflareConfig,
    http: HttpClient,
}

impl CloudflareUpdater {
    /// Builds the client (checks the zone id can go into a URL).
    pub fn new(config: CloudflareConfig) -> Result<Self, DdnsError> {
        if config.zone_id.is_empty() || !config.zone_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DdnsError::Config(format!(
                "Cloudflare zone id {:?} is not alphanumeric",
                config.zone_id
            )));
        }
        let http = HttpClient::new(config.timeout)?;
        Ok(CloudflareUpdater { config, http })
    }

    fn records_url(&self) -> String {
        format!(
            "{}/zones/{}/dns_records",
            self.config.api_url.trim_end_matches('/'),
            self.config.zone_id
        )
    }

    /// One API call; an answer without `"success": true` is a refusal carrying the API's messages.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, DdnsError> {
        let auth = format!("Bearer {}", self.config.token.expose());
        let (status, v) = self
            .http
            .json(method, url, &[("authorization", &auth)], body)
            .await?;
        if status.is_success() && v["success"] == Value::Bool(true) {
            return Ok(v);
        }
        let messages: Vec<String> = v["errors"]
            .as_array()
            .map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{} (code {})",
                            e["message"].as_str().unwrap_or("?"),
                            e["code"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Err(DdnsError::Refused {
            server: url.to_owned(),
            reason: format!("HTTP {status}: {}", messages.join("; ")),
        })
    }

    /// The name's A records as (id, address), every page.
    async fn records(&self, name: &str) -> Result<Vec<(String, Ipv4Addr)>, DdnsError> {
        let mut out = Vec::new();
        for page in 1.. {
            let url = format!(
                "{}?type=A&name={name}&per_page=100&page={page}",
                self.records_url()
            );
            let v = self.call(Method::GET, &url, None).await?;
            let bad = |reason: &str| DdnsError::Protocol {
                server: url.clone(),
                reason: reason.to_owned(),
            };
            for r in v["result"]
                .as_array()
                .ok_or_else(|| bad("no result list"))?
            {
                let id = r["id"].as_str().ok_or_else(|| bad("a record without id"))?;
                let addr = r["content"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| bad("an A record without an IPv4 content"))?;
                out.push((id.to_owned(), addr));
            }
            let total_pages = v["result_info"]["total_pages"].as_u64().unwrap_or(1);
            if page >= total_pages {
                break;
            }
        }
        Ok(out)
    }

    fn record_body(&self, name: &str, addr: Ipv4Addr) -> Value {
        json!({ "type": "A", "name": name, "content": addr.to_string(), "ttl": self.config.ttl, "proxied": false })
    }

    async fn apply(&self, name: &str, ops: Vec<RecordOp<String>>) -> Result<(), DdnsError> {
        for op in ops {
            match op {
                RecordOp::Update(id, addr) => {
                    let url = format!("{}/{id}", self.records_url());
                    self.call(Method::PUT, &url, Some(&self.record_body(name, addr)))
                        .await?;
                }
                RecordOp::Create(addr) => {
                    self.call(
                        Method::POST,
                        &self.records_url(),
                        Some(&self.record_body(name, addr)),
                    )
                    .await?;
                }
                RecordOp::Delete(id) => {
                    self.call(
                        Method::DELETE,
                        &format!("{}/{id}", self.records_url()),
                        None,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DnsUpdater for CloudflareUpdater {
    async fn current(&self, name: &str) -> Result<BTreeSet<Ipv4Addr>, DdnsError> {
        let name = check_hostname(name)?;
        Ok(self
            .records(&name)
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    async fn set(&self, name: &str, addresses: &BTreeSet<Ipv4Addr>) -> Result<(), DdnsError> {
        let name = check_hostname(name)?;
        let current = self.records(&name).await?;
        self.apply(&name, record_ops(&current, addresses)).await
    }

    async fn remove(&self, name: &str) -> Result<(), DdnsError> {
        let name = check_hostname(name)?;
        let current = self.records(&name).await?;
        self.apply(&name, record_ops(&current, &BTreeSet::new()))
            .await
    }
}
