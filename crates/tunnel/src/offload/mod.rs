//! TUN offloads, as pure functions over packet bytes: the `virtio_net_hdr`
//! that prefixes every packet on a TUN opened with `IFF_VNET_HDR`,
//! segmentation of the kernel's TCP super-packets (TSO) into packets of the
//! interface's MTU on the way out ([`gso`]), and coalescing of decrypted TCP
//! segments into super-packets on the way in ([`gro`]), so that one TUN read
//! or write carries up to 64 KB instead of one packet.

pub(crate) mod checksum;
pub(crate) mod gro;
pub(crate) mod gso;

/// Size of `struct virtio_net_hdr` (the TUN default, `TUNSETVNETHDRSZ`).
pub(crate) const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset`
/// holds only the pseudo-header sum; complete it over `csum_start..`.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums need no verification.
pub(crate) const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_*`.
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
/// The ECN flag bit of `gso_type`.
pub(crate) const GSO_ECN: u8 = 0x80;

pub(crate) const PROTO_TCP: u8 = 6;

/// `struct virtio_net_hdr` (host byte order, little-endian on the machines we
/// run on; the TUN device uses the legacy native-endian layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header as bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// The header of a packet that is complete and whose checksums were
    /// already verified by the sender's (authenticated) encryption.
    pub fn data_valid() -> Self {
        VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        }
    }
}

/// The IP and TCP header layout of a TCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpLayout {
    /// 4 or 6.
    pub version: u8,
    /// Length of the IP header (where TCP starts).
    pub ip_len: usize,
    /// Length of the TCP header.
    pub tcp_len: usize,
}

impl TcpLayout {
    /// Length of both headers.
    pub fn headers(&self) -> usize {
        self.ip_len + self.tcp_len
    }

    /// The layout of `packet` when it is an unfragmented TCP packet (IPv4,
    /// or IPv6 without extension headers) with complete headers.
    pub fn of(packet: &[u8]) -> Option<Self> {
        let version = packet.first()? >> 4;
        let ip_len = match version {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
                if ihl < 20 || *packet.get(9)? != PROTO_TCP || fragment & 0x3fff != 0 {
                    return None;
                }
                ihl
            }
            6 if *packet.get(6)? == PROTO_TCP => 40,
            _ => return None,
        };
        let tcp_len = usize::from(packet.get(ip_len + 12)? >> 4) * 4;
        if tcp_len < 20 || packet.len() < ip_len + tcp_len {
            return None;
        }
        Some(TcpLayout {
            version,
            ip_len,
            tcp_len,
        })
    }
}

/// Source and destination addresses of an IPv4 or IPv6 packet.
pub(crate) fn addresses(packet: &[u8]) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let a: [u8; 4] = packet[12..16].try_into().ok()?;
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b))))
        }
        6 if packet.len() >= 40 => {
            let a: [u8; 16] = packet[8..24].try_into().ok()?;
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))))
        }
        _ => None,
    }
}

/// Sets an IPv4 header's total length and recomputes its checksum, or an
/// IPv6 header's payload length, for a packet of `total` bytes.
pub(crate) fn set_ip_length(packet: &mut [u8], layout: &TcpLayout, total: usize) {
    if layout.version == 4 {
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        packet[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&packet[..layout.ip_len]);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
}

/// Writes the full TCP checksum of `packet` (a complete TCP packet).
pub(crate) fn set_tcp_checksum(packet: &mut [u8], layout: &TcpLayout) {
    let Some((src, dst)) = addresses(packet) else {
        return;
    };
    let at = layout.ip_len + 16;
    packet[at..at + 2].copy_from_slice(&[0, 0]);
    let tcp = &packet[layout.ip_len..];
    let sum = checksum::add(checksum::pseudo_header(src, dst, PROTO_TCP, tcp.len()), tcp);
    let c = !checksum::fold(sum);
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (`F_NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the checksum is
/// the complement of the sum over everything from `csum_start`. `false`
/// when the offsets do not fit the packet.
pub(crate) fn complete_checksum(packet: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let at = csum_start + csum_offset;
    if at + 2 > packet.len() {
        return false;
    }
    let c = checksum::checksum(&packet[csum_start..]);
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
pub(crate) mod testing {
    //! Packet builders for the offload tests.
    use super::*;

    /// A valid TCP packet (IPv4 when `v6` is false) with `payload`.
    pub fn tcp(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        tcp_id(v6, seq, flags, payload, 0x1234)
    }

    /// As [`tcp`], with IPv4 identification `id`.
    pub fn tcp_id(v6: bool, seq: u32, flags: u8, payload: &[u8], id: u16) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip_len + 20 + payload.len()];
        if v6 {
            p[0] = 0x60;
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            p[24..40].copy_from_slice(
                &"2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
        } else {
            p[0] = 0x45;
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[10, 200, 0, 1]);
            p[16..20].copy_from_slice(&[10, 200, 0, 2]);
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&777u32.to_be_bytes());
        p[t + 12] = 5 << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..].copy_from_slice(payload);
        let layout = TcpLayout::of(&p).unwrap();
        let total = p.len();
        set_ip_length(&mut p, &layout, total);
        set_tcp_checksum(&mut p, &layout);
        p
    }

    /// Whether the IP (v4) and TCP checksums of `packet` verify.
    pub fn checksums_valid(packet: &[u8]) -> bool {
        let layout = TcpLayout::of(packet).unwrap();
        if layout.version == 4 && checksum::checksum(&packet[..layout.ip_len]) != 0 {
            return false;
        }
        let (src, dst) = addresses(packet).unwrap();
        let tcp = &packet[layout.ip_len..];
        checksum::fold(checksum::add(
            checksum::pseudo_header(src, dst, PROTO_TCP, tcp.len()),
            tcp,
        )) == 0xffff
    }

    pub fn seq(packet: &[u8]) -> u32 {
        let t = TcpLayout::of(packet).unwrap().ip_len;
        u32::from_be_bytes(packet[t + 4..t + 8].try_into().unwrap())
    }

    pub fn flags(packet: &[u8]) -> u8 {
        packet[TcpLayout::of(packet).unwrap().ip_len + 13]
    }

    pub fn payload(packet: &[u8]) -> &[u8] {
        &packet[TcpLayout::of(packet).unwrap().headers()..]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1368,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
        assert_eq!(VnetHdr::parse(&[0u8; 9]), None);
    }

    #[test]
    fn layouts_of_tcp_packets_only() {
        let v4 = tcp(false, 1, 0x10, b"abc");
        assert_eq!(
            TcpLayout::of(&v4),
            Some(TcpLayout {
                version: 4,
                ip_len: 20,
                tcp_len: 20
            })
        );
        let v6 = tcp(true, 1, 0x10, b"abc");
        assert_eq!(TcpLayout::of(&v6).map(|l| l.ip_len), Some(40));
        let mut udp = v4.clone();
        udp[9] = 17;
        assert_eq!(TcpLayout::of(&udp), None);
        let mut fragment = v4.clone();
        fragment[6] = 0x20; // MF
        assert_eq!(TcpLayout::of(&fragment), None);
        assert_eq!(TcpLayout::of(&v4[..30]), None);
        assert!(checksums_valid(&v4) && checksums_valid(&v6));
    }

    #[test]
    fn partial_checksums_are_completed() {
        let full = tcp(false, 9, 0x18, b"hello, world");
        let mut partial = full.clone();
        // As the kernel hands it over: the pseudo-header sum in the field.
        let (src, dst) = addresses(&full).unwrap();
        let pseudo = checksum::fold(checksum::pseudo_header(
            src,
            dst,
            PROTO_TCP,
            full.len() - 20,
        ));
        partial[36..38].copy_from_slice(&pseudo.to_be_bytes());
        assert!(!checksums_valid(&partial));
        assert!(complete_checksum(&mut partial, 20, 16));
        assert_eq!(partial, full);
        assert!(!complete_checksum(&mut partial, 20, 60));
    }
}
