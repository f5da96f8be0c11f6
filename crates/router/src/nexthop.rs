//! Kernel nexthop objects (`RTM_{NEW,DEL,GET}NEXTHOP`, `ip nexthop`) over netlink.
//!
//! netlink-packet-route 0.34 (pinned with rtnetlink 0.24) has no nexthop
//! messages, only the route attribute `RTA_NH_ID`. This module encodes and
//! decodes `struct nhmsg` and the `NHA_*` attributes we use (see
//! `include/uapi/linux/nexthop.h`) and sends them through a `netlink-proto`
//! connection of its own — the same request API rtnetlink is built on — so no
//! `ip` binary is needed.

use std::net::Ipv4Addr;

use futures::StreamExt as _;
use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_proto::ConnectionHandle;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};

/// `RTM_NEWNEXTHOP`.
pub const RTM_NEWNEXTHOP: u16 = 104;
/// `RTM_DELNEXTHOP`.
pub const RTM_DELNEXTHOP: u16 = 105;
/// `RTM_GETNEXTHOP`.
pub const RTM_GETNEXTHOP: u16 = 106;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_RES_GROUP: u16 = 12;
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;

/// `NEXTHOP_GRP_TYPE_RES`.
pub const GROUP_TYPE_RESILIENT: u16 = 1;

/// Parameters of a resilient group (`NHA_RES_GROUP`); timers in clock ticks (1/100 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResilientParams {
    /// `NHA_RES_GROUP_BUCKETS`.
    pub buckets: Option<u16>,
    /// `NHA_RES_GROUP_IDLE_TIMER`.
    pub idle_timer: Option<u32>,
    /// `NHA_RES_GROUP_UNBALANCED_TIMER`.
    pub unbalanced_timer: Option<u32>,
}

/// One `NHA_*` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexthopAttribute {
    /// `NHA_ID`.
    Id(u32),
    /// `NHA_GROUP`: member ids with weights (1..=256).
    Group(Vec<(u32, u16)>),
    /// `NHA_GROUP_TYPE`.
    GroupType(u16),
    /// `NHA_OIF`.
    Oif(u32),
    /// `NHA_GATEWAY` (IPv4).
    Gateway(Ipv4Addr),
    /// `NHA_RES_GROUP`.
    Resilient(ResilientParams),
    /// Anything else, kept raw.
    Other(u16, Vec<u8>),
}

/// An `RTM_*NEXTHOP` message: `struct nhmsg` plus attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopMessage {
    /// Netlink message type (`RTM_NEWNEXTHOP`, ...).
    pub message_type: u16,
    /// `nh_family`.
    pub family: u8,
    /// `nh_scope`.
    pub scope: u8,
    /// `nh_protocol`: who installed it (we mark ours).
    pub protocol: u8,
    /// `nh_flags`.
    pub flags: u32,
    /// Attributes.
    pub attributes: Vec<NexthopAttribute>,
}

fn push_nla(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (len.next_multiple_of(4) - len), 0);
}

impl NexthopMessage {
    fn new(message_type: u16, family: u8, protocol: u8, attributes: Vec<NexthopAttribute>) -> Self {
        Self {
            message_type,
            family,
            scope: 0,
            protocol,
            flags: 0,
            attributes,
        }
    }

    /// The value of `NHA_ID`.
    pub fn id(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Id(id) => Some(*id),
            _ => None,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.family, self.scope, self.protocol, 0];
        out.extend_from_slice(&self.flags.to_ne_bytes());
        for attr in &self.attributes {
            match attr {
                NexthopAttribute::Id(id) => push_nla(&mut out, NHA_ID, &id.to_ne_bytes()),
                NexthopAttribute::Group(members) => {
                    let mut v = Vec::with_capacity(members.len() * 8);
                    for (id, weight) in members {
                        let w = weight.clamp(&1, &256) - 1;
                        v.extend_from_slice(&id.to_ne_bytes());
                        v.push((w & 0xff) as u8);
                        v.push((w >> 8) as u8);
                        v.extend_from_slice(&[0, 0]);
                    }
                    push_nla(&mut out, NHA_GROUP, &v);
                }
                NexthopAttribute::GroupType(t) => {
                    push_nla(&mut out, NHA_GROUP_TYPE, &t.to_ne_bytes())
                }
                NexthopAttribute::Oif(i) => push_nla(&mut out, NHA_OIF, &i.to_ne_bytes()),
                NexthopAttribute::Gateway(a) => push_nla(&mut out, NHA_GATEWAY, &a.octets()),
                NexthopAttribute::Resilient(p) => {
                    let mut v = Vec::new();
                    if let Some(b) = p.buckets {
                        push_nla(&mut v, NHA_RES_GROUP_BUCKETS, &b.to_ne_bytes());
                    }
                    if let Some(t) = p.idle_timer {
                        push_nla(&mut v, NHA_RES_GROUP_IDLE_TIMER, &t.to_ne_bytes());
                    }
                    if let Some(t) = p.unbalanced_timer {
                        push_nla(&mut v, NHA_RES_GROUP_UNBALANCED_TIMER, &t.to_ne_bytes());
                    }
                    push_nla(&mut out, NHA_RES_GROUP | NLA_F_NESTED, &v);
                }
                NexthopAttribute::Other(kind, v) => push_nla(&mut out, *kind, v),
            }
        }
        out
    }

    fn decode(message_type: u16, b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 8 {
            return Err(DecodeError::from(format!(
                "nhmsg too short: {} bytes",
                b.len()
            )));
        }
        let mut msg = Self {
            message_type,
            family: b[0],
            scope: b[1],
            protocol: b[2],
            flags: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            attributes: Vec::new(),
        };
        for (kind, v) in nlas(&b[8..])? {
            let attr = match kind {
                NHA_ID => NexthopAttribute::Id(u32_of(v)?),
                NHA_OIF => NexthopAttribute::Oif(u32_of(v)?),
                NHA_GROUP_TYPE if v.len() >= 2 => {
                    NexthopAttribute::GroupType(u16::from_ne_bytes([v[0], v[1]]))
                }
                NHA_GATEWAY if v.len() == 4 => {
                    NexthopAttribute::Gateway(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
                }
                NHA_GROUP => NexthopAttribute::Group(
                    v.chunks_exact(8)
                        .map(|c| {
                            let id = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                            (id, u16::from(c[4]) + (u16::from(c[5]) << 8) + 1)
                        })
                        .collect(),
                ),
                NHA_RES_GROUP => {
                    let mut p = ResilientParams::default();
                    for (k, v) in nlas(v)? {
                        match k {
                            NHA_RES_GROUP_BUCKETS if v.len() >= 2 => {
                                p.buckets = Some(u16::from_ne_bytes([v[0], v[1]]))
                            }
                            NHA_RES_GROUP_IDLE_TIMER => p.idle_timer = Some(u32_of(v)?),
                            NHA_RES_GROUP_UNBALANCED_TIMER => p.unbalanced_timer = Some(u32_of(v)?),
                            _ => {}
                        }
                    }
                    NexthopAttribute::Resilient(p)
                }
                other => NexthopAttribute::Other(other, v.to_vec()),
            };
            msg.attributes.push(attr);
        }
        Ok(msg)
    }
}

fn u32_of(v: &[u8]) -> Result<u32, DecodeError> {
    v.get(..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| DecodeError::from("u32 attribute too short"))
}

/// Splits a buffer into (type, value) attributes.
fn nlas(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return Err(DecodeError::from(format!("bad attribute length {len}")));
        }
        out.push((kind, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(out)
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }
    fn buffer_len(&self) -> usize {
        self.encode().len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.encode());
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(header.message_type, payload)
    }
}

/// Errors of nexthop requests.
#[derive(Debug, thiserror::Error)]
pub enum NexthopError {
    /// The netlink socket could not be opened.
    #[error("opening netlink socket for nexthops: {0}")]
    Socket(#[source] std::io::Error),
    /// The connection task is gone.
    #[error("netlink connection closed")]
    Closed,
    /// The kernel refused the request.
    #[error("kernel refused {op}: {source}")]
    Kernel {
        /// What was asked.
        op: String,
        /// errno from the kernel.
        #[source]
        source: std::io::Error,
    },
}

impl NexthopError {
    /// The errno of a kernel refusal.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One kernel nexthop object as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNexthop {
    /// `NHA_ID`.
    pub id: u32,
    /// `nh_protocol`.
    pub protocol: u8,
    /// Gateway and outgoing interface index, for a single nexthop.
    pub via: Option<(Ipv4Addr, u32)>,
    /// Members (id, weight), for a group.
    pub group: Option<Vec<(u32, u16)>>,
    /// Group type (`GROUP_TYPE_RESILIENT` for ours).
    pub group_type: u16,
    /// Resilient parameters.
    pub resilient: ResilientParams,
}

impl From<NexthopMessage> for KernelNexthop {
    fn from(m: NexthopMessage) -> Self {
        let mut nh = KernelNexthop {
            id: 0,
            protocol: m.protocol,
            via: None,
            group: None,
            group_type: 0,
            resilient: ResilientParams::default(),
        };
        let (mut gw, mut oif) = (None, None);
        for a in m.attributes {
            match a {
                NexthopAttribute::Id(id) => nh.id = id,
                NexthopAttribute::Group(g) => nh.group = Some(g),
                NexthopAttribute::GroupType(t) => nh.group_type = t,
                NexthopAttribute::Oif(i) => oif = Some(i),
                NexthopAttribute::Gateway(a) => gw = Some(a),
                NexthopAttribute::Resilient(p) => nh.resilient = p,
                NexthopAttribute::Other(..) => {}
            }
        }
        if let (Some(gw), Some(oif)) = (gw, oif) {
            nh.via = Some((gw, oif));
        }
        nh
    }
}

/// A netlink connection for nexthop objects.
#[derive(Debug, Clone)]
pub struct NexthopHandle {
    handle: ConnectionHandle<NexthopMessage>,
}

impl NexthopHandle {
    /// Opens a connection in the current network namespace and spawns its task.
    pub fn connect() -> Result<Self, NexthopError> {
        let (conn, handle, _) = netlink_proto::new_connection::<NexthopMessage>(NETLINK_ROUTE)
            .map_err(NexthopError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn request(
        &self,
        msg: NexthopMessage,
        flags: u16,
        op: String,
    ) -> Result<Vec<NexthopMessage>, NexthopError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut responses = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| NexthopError::Closed)?;
        let mut out = Vec::new();
        while let Some(resp) = responses.next().await {
            match resp.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NexthopError::Kernel {
                        op,
                        source: e.to_io(),
                    });
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Dumps every nexthop object of the namespace.
    pub async fn dump(&self) -> Result<Vec<KernelNexthop>, NexthopError> {
        let msg = NexthopMessage::new(RTM_GETNEXTHOP, AF_UNSPEC, 0, vec![]);
        let msgs = self
            .request(msg, NLM_F_REQUEST | NLM_F_DUMP, "nexthop dump".into())
            .await?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.message_type == RTM_NEWNEXTHOP)
            .map(KernelNexthop::from)
            .collect())
    }

    /// `ip nexthop replace id <id> via <gateway> dev <oif> proto <protocol>`.
    pub async fn replace_via(
        &self,
        id: u32,
        gateway: Ipv4Addr,
        oif: u32,
        protocol: u8,
    ) -> Result<(), NexthopError> {
        let msg = NexthopMessage::new(
            RTM_NEWNEXTHOP,
            AF_INET,
            protocol,
            vec![
                NexthopAttribute::Id(id),
                NexthopAttribute::Oif(oif),
                NexthopAttribute::Gateway(gateway),
            ],
        );
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(msg, flags, format!("nexthop replace id {id} via {gateway}"))
            .await
            .map(drop)
    }

    /// `ip nexthop replace id <id> group <members> type resilient buckets <n> idle_timer <t>`.
    pub async fn replace_resilient_group(
        &self,
        id: u32,
        members: &[u32],
        buckets: u16,
        idle_timer_secs: u32,
        protocol: u8,
    ) -> Result<(), NexthopError> {
        let msg = NexthopMessage::new(
            RTM_NEWNEXTHOP,
            AF_UNSPEC,
            protocol,
            vec![
                NexthopAttribute::Id(id),
                NexthopAttribute::Group(members.iter().map(|m| (*m, 1)).collect()),
                NexthopAttribute::GroupType(GROUP_TYPE_RESILIENT),
                NexthopAttribute::Resilient(ResilientParams {
                    buckets: Some(buckets),
                    idle_timer: Some(idle_timer_secs.saturating_mul(100)),
                    unbalanced_timer: None,
                }),
            ],
        );
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(
            msg,
            flags,
            format!("nexthop replace group id {id} members {members:?}"),
        )
        .await
        .map(drop)
    }

    /// `ip nexthop del id <id>`; a missing object counts as deleted.
    pub async fn delete(&self, id: u32) -> Result<(), NexthopError> {
        let msg = NexthopMessage::new(RTM_DELNEXTHOP, AF_UNSPEC, 0, vec![NexthopAttribute::Id(id)]);
        match self
            .request(
                msg,
                NLM_F_REQUEST | NLM_F_ACK,
                format!("nexthop del id {id}"),
            )
            .await
        {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_message_roundtrips_with_weights_and_nested_params() {
        let msg = NexthopMessage::new(
            RTM_NEWNEXTHOP,
            AF_UNSPEC,
            77,
            vec![
                NexthopAttribute::Id(7700),
                NexthopAttribute::Group(vec![(7701, 1), (7702, 256)]),
                NexthopAttribute::GroupType(GROUP_TYPE_RESILIENT),
                NexthopAttribute::Resilient(ResilientParams {
                    buckets: Some(128),
                    idle_timer: Some(3000),
                    unbalanced_timer: None,
                }),
            ],
        );
        let bytes = msg.encode();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(bytes[2], 77);
        assert_eq!(NexthopMessage::decode(RTM_NEWNEXTHOP, &bytes).unwrap(), msg);
    }

    #[test]
    fn gateway_message_layout_matches_kernel_abi() {
        let msg = NexthopMessage::new(
            RTM_NEWNEXTHOP,
            AF_INET,
            77,
            vec![
                NexthopAttribute::Id(5),
                NexthopAttribute::Gateway(Ipv4Addr::new(10, 0, 0, 11)),
            ],
        );
        let b = msg.encode();
        // nhmsg (8) + NHA_ID (8) + NHA_GATEWAY (8)
        assert_eq!(b.len(), 24);
        assert_eq!(u16::from_ne_bytes([b[8], b[9]]), 8);
        assert_eq!(u16::from_ne_bytes([b[10], b[11]]), NHA_ID);
        assert_eq!(&b[20..24], &[10, 0, 0, 11]);
        let back: KernelNexthop = NexthopMessage::decode(RTM_NEWNEXTHOP, &b).unwrap().into();
        assert_eq!(back.id, 5);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        assert!(NexthopMessage::decode(RTM_NEWNEXTHOP, &[0, 0, 0]).is_err());
        assert!(
            NexthopMessage::decode(RTM_NEWNEXTHOP, &[2, 0, 77, 0, 0, 0, 0, 0, 200, 0, 1, 0])
                .is_err()
        );
    }
}
