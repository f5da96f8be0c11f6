//! DDNS for the gateways: one A record per healthy gateway public IP under
//! one name, written by one writer (the active router). A [`DnsUpdater`]
//! sets the A records of a name to exactly a set of addresses, by RFC 2136
//! dynamic update with TSIG ([`rfc2136`]) or a provider's HTTP API
//! ([`cloudflare`], [`dynu`]); the [`plan`] module decides when to write
//! (changes only, a minimum interval, retries with backoff), purely.
//!
//! Credentials live in [`Secret`]s, whose `Debug` and `Display` print
//! `<redacted>`; no error message carries one.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod cloudflare;
pub mod dynu;
mod http;
pub mod plan;
pub mod rfc2136;
pub mod writer;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// A credential (API token, TSIG secret). Its formatting never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why an update failed. Messages name the server and the cause, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum DdnsError {
    /// The name is not inside the configured zone / domain.
    #[error("{name} is not inside {zone}")]
    OutsideZone {
        /// The record name.
        name: String,
        /// The zone or domain.
        zone: String,
    },
    /// A name, key or URL in the configuration is malformed.
    #[error("invalid DDNS configuration: {0}")]
    Config(String),
    /// The server could not be reached or did not answer in time.
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// Server address or URL.
        server: String,
        /// The cause.
        reason: String,
    },
    /// The server answered with a refusal or error.
    #[error("{server} refused the update: {reason}")]
    Refused {
        /// Server address or URL.
        server: String,
        /// What it said (RCODE, HTTP status and the API's error message).
        reason: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from {server}: {reason}")]
    Protocol {
        /// Server address or URL.
        server: String,
        /// What was wrong.
        reason: String,
    },
}

/// Sets and removes the A records of one name. One implementation per
/// way of writing DNS; the router's DDNS writer holds a `Box<dyn DnsUpdater>`.
#[async_trait::async_trait]
pub trait DnsUpdater: Send + Sync + std::fmt::Debug {
    /// The A records of `name` as the server has them now.
    async fn current(&self, name: &str) -> Result<BTreeSet<Ipv4Addr>, DdnsError>;
    /// Makes the A records of `name` exactly `addresses` (non-empty).
    async fn set(&self, name: &str, addresses: &BTreeSet<Ipv4Addr>) -> Result<(), DdnsError>;
    /// Removes every A record of `name`.
    async fn remove(&self, name: &str) -> Result<(), DdnsError>;
}

/// `name` with a trailing dot removed and lower-cased, for comparisons.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret,
        }
        assert!(!format!("{:?}", Holder { token: s.clone() }).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
