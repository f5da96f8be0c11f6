//! Heartbeat datagrams on the wire: plain (today's 12-byte format, when no
//! key is configured) or authenticated with HMAC-SHA256 and protected against
//! replay.
//!
//! Authenticated format (version 2, 56 bytes):
//! `magic(4) version(1)=2 role(1) priority(1) reserved(1) vip(4) sender(4)
//! counter(8, big endian) hmac(32)`, the HMAC over everything before it.
//!
//! - The sender's own address is inside the MAC and must equal the UDP
//!   source, so a captured heartbeat cannot be re-sent as another router's.
//! - The counter is the sender's clock in microseconds since the Unix epoch,
//!   forced strictly increasing: a receiver accepts a counter only above the
//!   last one it accepted from that sender (replay within a run), and only
//!   within `max_skew` of its own clock (replay of old captures after the
//!   receiver restarted and forgot its last counters).
//!
//! Parsing and checks are pure: the clock comes in as an argument.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ring::hmac;
use vpno_net::election::{HEARTBEAT_LEN, HEARTBEAT_MAGIC, Heartbeat, HeartbeatError};

/// Version byte of the authenticated format.
pub const AUTHENTICATED_VERSION: u8 = 2;
/// Length of an authenticated heartbeat.
pub const AUTHENTICATED_LEN: usize = 24 + 32;
/// Shortest accepted key (the controller's Secret holds 32 random bytes).
pub const MIN_KEY_LEN: usize = 16;

/// Why a received datagram was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not a heartbeat at all.
    #[error("malformed heartbeat: {0}")]
    Malformed(#[from] HeartbeatError),
    /// Missing or wrong HMAC (or a plain heartbeat where a key is configured).
    #[error("heartbeat not authenticated with the shared key")]
    Unauthenticated,
    /// Authentic, but seen before, too old, or re-sent from another address.
    #[error("replayed heartbeat ({0})")]
    Replayed(&'static str),
}

impl Rejected {
    /// Low-cardinality metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Malformed(_) => "malformed",
            Rejected::Unauthenticated => "unauthenticated",
            Rejected::Replayed(_) => "replayed",
        }
    }
}

/// The shared heartbeat key.
#[derive(Clone)]
pub struct HeartbeatKey(hmac::Key);

impl std::fmt::Debug for HeartbeatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeartbeatKey(<secret>)")
    }
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading the file failed.
    #[error("reading heartbeat key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Too short to be a key.
    #[error("heartbeat key file {path} holds {len} bytes; at least {MIN_KEY_LEN} are needed")]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
}

impl HeartbeatKey {
    /// A key from raw bytes (at least [`MIN_KEY_LEN`]).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= MIN_KEY_LEN).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Reads the key file: its bytes as they are (a Kubernetes Secret
    /// mounted as a file holds the raw key).
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: display.clone(),
            source,
        })?;
        Self::new(&bytes).ok_or(KeyError::TooShort {
            path: display,
            len: bytes.len(),
        })
    }
}

/// Encodes the heartbeats this router sends.
#[derive(Debug)]
pub struct Sealer {
    key: Option<HeartbeatKey>,
    sender: Ipv4Addr,
    last_counter: u64,
}

impl Sealer {
    /// Plain heartbeats without a key; authenticated ones from `sender` with one.
    pub fn new(key: Option<HeartbeatKey>, sender: Ipv4Addr) -> Self {
        Self {
            key,
            sender,
            last_counter: 0,
        }
    }

    /// The datagram for `hb`; `now_us` is the clock in microseconds since the epoch.
    pub fn seal(&mut self, hb: &Heartbeat, now_us: u64) -> Vec<u8> {
        let plain = hb.encode();
        let Some(key) = &self.key else {
            return plain.to_vec();
        };
        self.last_counter = now_us.max(self.last_counter + 1);
        let mut b = Vec::with_capacity(AUTHENTICATED_LEN);
        b.extend_from_slice(&plain);
        b[4] = AUTHENTICATED_VERSION;
        b.extend_from_slice(&self.sender.octets());
        b.extend_from_slice(&self.last_counter.to_be_bytes());
        let tag = hmac::sign(&key.0, &b);
        b.extend_from_slice(tag.as_ref());
        b
    }
}

/// Decodes and checks received heartbeats.
#[derive(Debug)]
pub struct Opener {
    key: Option<HeartbeatKey>,
    max_skew: Duration,
    last_seen: BTreeMap<Ipv4Addr, u64>,
}

impl Opener {
    /// Accepts plain heartbeats without a key, only authenticated ones with
    /// one, whose counter lies within `max_skew` of the receiver's clock.
    pub fn new(key: Option<HeartbeatKey>, max_skew: Duration) -> Self {
        Self {
            key,
            max_skew,
            last_seen: BTreeMap::new(),
        }
    }

    /// Checks a datagram that arrived from `from` at `now_us`.
    pub fn open(&mut self, b: &[u8], from: Ipv4Addr, now_us: u64) -> Result<Heartbeat, Rejected> {
        let Some(key) = &self.key else {
            return Ok(Heartbeat::decode(b)?);
        };
        if b.len() == HEARTBEAT_LEN && b.starts_with(&HEARTBEAT_MAGIC) {
            return Err(Rejected::Unauthenticated);
        }
        if b.len() != AUTHENTICATED_LEN {
            return Err(HeartbeatError::Length(b.len()).into());
        }
        if b[..4] != HEARTBEAT_MAGIC || b[4] != AUTHENTICATED_VERSION {
            return Err(HeartbeatError::Magic.into());
        }
        let (message, tag) = b.split_at(AUTHENTICATED_LEN - 32);
        hmac::verify(&key.0, message, tag).map_err(|_| Rejected::Unauthenticated)?;
        let sender = Ipv4Addr::new(message[12], message[13], message[14], message[15]);
        if sender != from {
            return Err(Rejected::Replayed("sent from another address"));
        }
        let counter = u64::from_be_bytes(message[16..24].try_into().expect("8 bytes"));
        let skew = self.max_skew.as_micros() as u64;
        if counter.abs_diff(now_us) > skew {
            return Err(Rejected::Replayed("counter outside the clock window"));
        }
        if self
            .last_seen
            .get(&from)
            .is_some_and(|last| counter <= *last)
        {
            return Err(Rejected::Replayed("counter not above the last one"));
        }
        let mut plain = [0u8; HEARTBEAT_LEN];
        plain.copy_from_slice(&message[..HEARTBEAT_LEN]);
        plain[4] = vpno_net::election::HEARTBEAT_VERSION;
        let hb = Heartbeat::decode(&plain)?;
        self.last_seen.insert(from, counter);
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpno_net::egress::Role;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const SKEW: Duration = Duration::from_secs(30);
    const T: u64 = 1_800_000_000_000_000;

    fn key(byte: u8) -> HeartbeatKey {
        HeartbeatKey::new(&[byte; 32]).unwrap()
    }

    fn hb(role: Role) -> Heartbeat {
        Heartbeat {
            priority: 200,
            role,
            vip: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    #[test]
    fn without_a_key_the_format_is_unchanged() {
        let mut s = Sealer::new(None, A);
        let d = s.seal(&hb(Role::Active), T);
        assert_eq!(d, hb(Role::Active).encode().to_vec());
        let mut o = Opener::new(None, SKEW);
        assert_eq!(o.open(&d, A, T), Ok(hb(Role::Active)));
        // No replay protection without a key (today's behaviour).
        assert_eq!(o.open(&d, A, T), Ok(hb(Role::Active)));
    }

    #[test]
    fn authenticated_roundtrip() {
        let mut s = Sealer::new(Some(key(7)), A);
        let mut o = Opener::new(Some(key(7)), SKEW);
        let d = s.seal(&hb(Role::Standby), T);
        assert_eq!(d.len(), AUTHENTICATED_LEN);
        assert_eq!(o.open(&d, A, T + 1_000), Ok(hb(Role::Standby)));
        let d2 = s.seal(&hb(Role::Active), T);
        assert_eq!(
            o.open(&d2, A, T),
            Ok(hb(Role::Active)),
            "counter forced above the last"
        );
    }

    #[test]
    fn wrong_key_plain_or_tampered_heartbeats_are_unauthenticated() {
        let mut o = Opener::new(Some(key(7)), SKEW);
        let forged = Sealer::new(Some(key(8)), A).seal(&hb(Role::Active), T);
        assert_eq!(o.open(&forged, A, T), Err(Rejected::Unauthenticated));
        let plain = Sealer::new(None, A).seal(&hb(Role::Active), T);
        assert_eq!(o.open(&plain, A, T), Err(Rejected::Unauthenticated));
        let mut tampered = Sealer::new(Some(key(7)), A).seal(&hb(Role::Standby), T);
        tampered[5] = 1; // standby → active
        assert_eq!(o.open(&tampered, A, T), Err(Rejected::Unauthenticated));
        assert_eq!(Rejected::Unauthenticated.reason(), "unauthenticated");
        assert!(matches!(o.open(b"junk", A, T), Err(Rejected::Malformed(_))));
    }

    #[test]
    fn replays_are_rejected() {
        let mut s = Sealer::new(Some(key(7)), A);
        let mut o = Opener::new(Some(key(7)), SKEW);
        let first = s.seal(&hb(Role::Active), T);
        let second = s.seal(&hb(Role::Active), T + 1_000_000);
        assert!(o.open(&second, A, T + 1_000_000).is_ok());
        let r = o.open(&second, A, T + 1_000_000).unwrap_err();
        assert_eq!(r.reason(), "replayed");
        assert!(o.open(&first, A, T + 1_000_000).is_err(), "older counter");
        // Re-sent from another router's address.
        assert_eq!(
            o.open(&second, B, T + 1_000_000).unwrap_err().reason(),
            "replayed"
        );
        // A receiver that restarted (no memory) still refuses old captures.
        let mut fresh = Opener::new(Some(key(7)), SKEW);
        let late = T + 1_000_000 + SKEW.as_micros() as u64 + 1;
        assert_eq!(
            fresh.open(&second, A, late).unwrap_err().reason(),
            "replayed"
        );
        assert!(
            fresh.open(&second, A, T + 2_000_000).is_ok(),
            "within the window"
        );
    }

    #[test]
    fn keys_must_be_long_enough_and_are_never_printed() {
        assert!(HeartbeatKey::new(&[1; 15]).is_none());
        assert_eq!(format!("{:?}", key(1)), "HeartbeatKey(<secret>)");
        let dir = std::env::temp_dir().join(format!("vpno-hbkey-{}", std::process::id()));
        std::fs::write(&dir, b"short").unwrap();
        let e = HeartbeatKey::from_file(&dir).unwrap_err().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("holds 5 bytes"), "{e}");
        let missing = HeartbeatKey::from_file(std::path::Path::new("/nonexistent/key"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/key"), "{missing}");
    }
}
