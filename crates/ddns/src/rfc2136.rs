//! RFC 2136 dynamic update, signed with TSIG (RFC 8945), over TCP: one
//! update message deletes the name's A RRset and adds the desired records,
//! so the server switches atomically. Built on hickory-net's client
//! (`DnsMultiplexer::with_signer` signs updates and verifies the signed
//! answers) and hickory-proto's message types.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::{DnsHandle, DnsMultiplexer};
use hickory_proto::op::{
    DnsRequest, DnsRequestOptions, Message, MessageType, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

use crate::{DdnsError, DnsUpdater, Secret};

/// TSIG MAC algorithms (those hickory signs with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlg {
    /// `hmac-sha256`.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl FromStr for TsigAlg {
    type Err = DdnsError;
    fn from_str(s: &str) -> Result<Self, DdnsError> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlg::HmacSha256),
            "hmac-sha384" => Ok(TsigAlg::HmacSha384),
            "hmac-sha512" => Ok(TsigAlg::HmacSha512),
            other => Err(DdnsError::Config(format!(
                "TSIG algorithm {other:?} is not one of hmac-sha256, hmac-sha384, hmac-sha512"
            ))),
        }
    }
}

impl From<TsigAlg> for TsigAlgorithm {
    fn from(a: TsigAlg) -> Self {
        match a {
            TsigAlg::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlg::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlg::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

/// Where and how to send updates.
#[derive(Debug, Clone)]
pub struct Rfc2136Config {
    /// The primary server (`address:port`).
    pub server: SocketAddr,
    /// The zone updated (its SOA owner), e.g. `vpn.example.com`.
    pub zone: String,
    /// TSIG key name as the server knows it.
    pub key_name: String,
    /// TSIG algorithm.
    pub algorithm: TsigAlg,
    /// TSIG secret, base64 as in `tsig-keygen` / `keymgr` output.
    pub secret: Secret,
    /// TTL of the records written.
    pub ttl: u32,
    /// Time for one exchange.
    pub timeout: Duration,
}

/// A [`DnsUpdater`] speaking RFC 2136 with TSIG.
pub struct Rfc2136Updater {
    config: Rfc2136Config,
    zone: Name,
    signer: TSigner,
}

impl std::fmt::Debug for Rfc2136Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Updater")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn parse_name(s: &str, what: &str) -> Result<Name, DdnsError> {
    let mut n = Name::from_str(s).map_err(|e| DdnsError::Config(format!("{what} {s:?}: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

impl Rfc2136Updater {
    /// Checks the configuration (names, base64 secret, algorithm) and builds the signer.
    pub fn new(config: Rfc2136Config) -> Result<Self, DdnsError> {
        use base64::Engine as _;
        let zone = parse_name(&config.zone, "zone")?;
        let key_name = parse_name(&config.key_name, "TSIG key name")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(config.secret.expose().trim())
            .map_err(|_| {
                DdnsError::Config(format!("the secret of TSIG key {key_name} is not base64"))
            })?;
        let signer = TSigner::new(key, config.algorithm.into(), key_name, 300)
            .map_err(|e| DdnsError::Config(format!("TSIG key: {e}")))?;
        Ok(Rfc2136Updater {
            config,
            zone,
            signer,
        })
    }

    fn record_name(&self, name: &str) -> Result<Name, DdnsError> {
        let n = parse_name(name, "record name")?;
        if !self.zone.zone_of(&n) {
            return Err(DdnsError::OutsideZone {
                name: name.to_owned(),
                zone: self.config.zone.clone(),
            });
        }
        Ok(n)
    }

    fn server(&self) -> String {
        self.config.server.to_string()
    }

    /// Sends one message over a fresh TCP connection; the multiplexer signs
    /// updates and checks the answer's TSIG.
    async fn exchange(&self, message: Message) -> Result<Message, DdnsError> {
        let unreachable = |reason: String| DdnsError::Unreachable {
            server: self.server(),
            reason,
        };
        let timeout = self.config.timeout;
        let (connect, handle) = TcpClientStream::new(
            self.config.server,
            None,
            Some(timeout),
            TokioRuntimeProvider::new(),
        );
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mux = DnsMultiplexer::new(stream, handle)
            .with_timeout(timeout)
            .with_signer(self.signer.clone());
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(mux);
        let bg = tokio::spawn(background);
        let answer = client
            .send(DnsRequest::new(message, DnsRequestOptions::default()))
            .next()
            .await;
        bg.abort();
        match answer {
            Some(Ok(response)) => Ok(response.into_message()),
            Some(Err(e)) => Err(classify(
                &self.server(),
                &self.config.key_name,
                e.to_string(),
            )),
            None => Err(unreachable("connection closed without an answer".into())),
        }
    }

    async fn update(&self, message: Message) -> Result<(), DdnsError> {
        let answer = self.exchange(message).await?;
        match answer.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            code => Err(DdnsError::Refused {
                server: self.server(),
                reason: format!("RCODE {code}"),
            }),
        }
    }
}

/// A failed exchange. A server that rejects the key answers NOTAUTH
/// unsigned (or with an empty MAC), which the client's TSIG check reports
/// as a verification error before the RCODE can be read; say what it means.
fn classify(server: &str, key: &str, error: String) -> DdnsError {
    let lower = error.to_ascii_lowercase();
    if lower.contains("tsig") || lower.contains("hmac") {
        DdnsError::Refused {
            server: server.to_owned(),
            reason: format!(
                "its answer is not signed with TSIG key {key}: the server rejected the key \
                 (check the key name, algorithm and secret) ({error})"
            ),
        }
    } else {
        DdnsError::Unreachable {
            server: server.to_owned(),
            reason: error,
        }
    }
}

/// The update replacing `name`'s A RRset with `addresses` (empty: only the delete).
pub fn update_message(
    zone: &Name,
    name: &Name,
    addresses: &BTreeSet<Ipv4Addr>,
    ttl: u32,
) -> Message {
    let mut m = Message::new(0, MessageType::Query, OpCode::Update);
    // In an update the question section names the zone (RFC 2136 §2.3).
    let mut zone_q = Query::query(zone.clone(), RecordType::SOA);
    zone_q.set_query_class(DNSClass::IN);
    m.add_query(zone_q);
    // "Delete an RRset" (§2.5.2): class ANY, TTL 0, no RDATA.
    let mut delete = Record::update0(name.clone(), 0, RecordType::A).into_record_of_rdata();
    delete.dns_class = DNSClass::ANY;
    m.add_authority(delete);
    for a in addresses {
        m.add_authority(Record::from_rdata(name.clone(), ttl, RData::A(A(*a))));
    }
    m
}

#[async_trait::async_trait]
impl DnsUpdater for Rfc2136Updater {
    async fn current(&self, name: &str) -> Result<BTreeSet<Ipv4Addr>, DdnsError> {
        let n = self.record_name(name)?;
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(n.clone(), RecordType::A));
        let answer = self.exchange(m).await?;
        match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                return Err(DdnsError::Refused {
                    server: self.server(),
                    reason: format!("query: RCODE {code}"),
                });
            }
        }
        Ok(answer
            .answers
            .iter()
            .filter(|r| r.name == n)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn set(&self, name: &str, addresses: &BTreeSet<Ipv4Addr>) -> Result<(), DdnsError> {
        let n = self.record_name(name)?;
        self.update(update_message(&self.zone, &n, addresses, self.config.ttl))
            .await
    }

    async fn remove(&self, name: &str) -> Result<(), DdnsError> {
        let n = self.record_name(name)?;
        self.update(update_message(
            &self.zone,
            &n,
            &BTreeSet::new(),
            self.config.ttl,
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_deletes_the_rrset_and_adds_each_address() {
        let zone = Name::from_str("vpn.example.").unwrap();
        let name = Name::from_str("gw.vpn.example.").unwrap();
        let addrs: BTreeSet<Ipv4Addr> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let m = update_message(&zone, &name, &addrs, 60);
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert_eq!(m.authorities.len(), 3);
        assert_eq!(m.authorities[0].dns_class, DNSClass::ANY);
        assert_eq!(m.authorities[0].ttl, 0);
        let added: Vec<_> = m.authorities[1..]
            .iter()
            .map(|r| (r.dns_class, r.ttl, r.data.clone()))
            .collect();
        assert_eq!(
            added,
            vec![
                (DNSClass::IN, 60, RData::A(A("192.0.2.1".parse().unwrap()))),
                (DNSClass::IN, 60, RData::A(A("192.0.2.2".parse().unwrap())))
            ]
        );
        assert!(m.to_vec().is_ok());
    }

    #[test]
    fn refuses_names_outside_the_zone_and_bad_secrets() {
        let config = Rfc2136Config {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: "vpn.example".into(),
            key_name: "k".into(),
            algorithm: TsigAlg::HmacSha256,
            secret: Secret::new("c2VjcmV0"),
            ttl: 60,
            timeout: Duration::from_secs(1),
        };
        let u = Rfc2136Updater::new(config.clone()).unwrap();
        assert!(matches!(
            u.record_name("gw.other.example"),
            Err(DdnsError::OutsideZone { .. })
        ));
        assert!(u.record_name("gw.vpn.example").is_ok());
        assert!(!format!("{u:?}").contains("c2VjcmV0"));
        let bad = Rfc2136Config {
            secret: Secret::new("not base64!"),
            ..config
        };
        let e = Rfc2136Updater::new(bad).unwrap_err().to_string();
        assert!(
            e.contains("not base64") && !e.contains("not base64!\""),
            "{e}"
        );
        assert!("hmac-md5".parse::<TsigAlg>().is_err());
    }
}
