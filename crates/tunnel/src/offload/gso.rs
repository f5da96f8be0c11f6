//! Segmentation on the way out: a packet read from the TUN device may be a
//! TCP super-packet (TSO, up to 64 KB) with a partial checksum; split it into
//! packets of `gso_size` payload bytes with complete headers and checksums,
//! as the kernel's own GSO would.

use super::{
    F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, TcpLayout, VnetHdr, complete_checksum,
    set_ip_length, set_tcp_checksum,
};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet from the TUN device could not be turned into packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GsoError {
    /// A GSO type we did not enable (only TCP is).
    UnsupportedType(u8),
    /// The headers do not describe the packet (offsets out of range, not
    /// TCP, zero segment size).
    Malformed,
}

/// Calls `emit` with each complete IP packet that `packet` (read from the
/// TUN device behind `hdr`) stands for, in order. `scratch` is reused
/// between calls to build the segments.
pub(crate) fn segments(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), GsoError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0
                && !complete_checksum(
                    packet,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                return Err(GsoError::Malformed);
            }
            emit(packet);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => split_tcp(hdr, packet, scratch, emit),
        other => Err(GsoError::UnsupportedType(other)),
    }
}

fn split_tcp(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), GsoError> {
    let layout = TcpLayout::of(packet).ok_or(GsoError::Malformed)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(GsoError::Malformed);
    }
    let headers = layout.headers();
    let payload_len = packet.len() - headers;
    if payload_len <= mss {
        set_tcp_checksum(packet, &layout);
        emit(packet);
        return Ok(());
    }
    let t = layout.ip_len;
    let seq = u32::from_be_bytes([packet[t + 4], packet[t + 5], packet[t + 6], packet[t + 7]]);
    let flags = packet[t + 13];
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let count = payload_len.div_ceil(mss);
    for i in 0..count {
        let start = headers + i * mss;
        let end = (start + mss).min(packet.len());
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(&packet[start..end]);
        let offset = (i * mss) as u32;
        scratch[t + 4..t + 8].copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        scratch[t + 13] = f;
        if layout.version == 4 {
            scratch[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        }
        let total = scratch.len();
        set_ip_length(scratch, &layout, total);
        set_tcp_checksum(scratch, &layout);
        emit(scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{PROTO_TCP, addresses, checksum};
    use super::*;

    /// A super-packet as the kernel hands it over: one header, the whole
    /// payload, the pseudo-header sum in the checksum field.
    fn super_packet(v6: bool, flags: u8, payload: &[u8]) -> (VnetHdr, Vec<u8>) {
        let mut p = tcp(v6, 1000, flags, payload);
        let layout = TcpLayout::of(&p).unwrap();
        let (src, dst) = addresses(&p).unwrap();
        let pseudo = checksum::fold(checksum::pseudo_header(
            src,
            dst,
            PROTO_TCP,
            p.len() - layout.ip_len,
        ));
        let at = layout.ip_len + 16;
        p[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: layout.headers() as u16,
            gso_size: 0,
            csum_start: layout.ip_len as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    fn split(hdr: VnetHdr, mut p: Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        segments(&hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        out
    }

    /// At MTU 1420 an IPv4 TCP segment carries 1380 bytes: payloads of
    /// MSS−1, MSS and MSS+1 bytes give 1, 1 and 2 packets of at most MTU.
    #[test]
    fn splits_at_the_mtu_edges() {
        const MTU: usize = 1420;
        for v6 in [false, true] {
            let mss = MTU - if v6 { 60 } else { 40 };
            for (len, packets) in [(mss - 1, 1), (mss, 1), (mss + 1, 2), (45 * mss + 7, 46)] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let (mut hdr, p) = super_packet(v6, 0x18 | 0x01, &payload);
                hdr.gso_size = mss as u16;
                let out = split(hdr, p);
                assert_eq!(out.len(), packets, "v6 {v6} len {len}");
                let mut joined = Vec::new();
                for (i, s) in out.iter().enumerate() {
                    assert!(s.len() <= MTU, "packet of {} > MTU", s.len());
                    assert!(checksums_valid(s), "checksums of segment {i}");
                    assert_eq!(seq(s), 1000 + (i * mss) as u32);
                    let last = i + 1 == out.len();
                    assert_eq!(
                        flags(s) & (TCP_FIN | TCP_PSH) != 0,
                        last,
                        "FIN/PSH only last"
                    );
                    joined.extend_from_slice(payload_of(s));
                }
                assert_eq!(joined, payload, "payload preserved in order");
            }
        }
    }

    fn payload_of(s: &[u8]) -> &[u8] {
        payload(s)
    }

    #[test]
    fn ipv4_ids_increase_per_segment() {
        let (mut hdr, p) = super_packet(false, 0x10, &[1u8; 3000]);
        hdr.gso_size = 1000;
        let ids: Vec<u16> = split(hdr, p)
            .iter()
            .map(|s| u16::from_be_bytes([s[4], s[5]]))
            .collect();
        assert_eq!(ids, vec![0x1234, 0x1235, 0x1236]);
    }

    #[test]
    fn plain_packets_pass_with_their_checksum_completed() {
        let full = tcp(false, 1000, 0x18, b"ping");
        let (mut hdr, p) = super_packet(false, 0x18, b"ping");
        hdr.gso_type = GSO_NONE;
        assert_eq!(split(hdr, p), vec![full.clone()]);
        // No flags: passed through untouched.
        assert_eq!(split(VnetHdr::default(), full.clone()), vec![full]);
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let (mut hdr, mut p) = super_packet(false, 0x10, &[0u8; 100]);
        assert_eq!(
            segments(&hdr, &mut p, &mut Vec::new(), |_| {}),
            Err(GsoError::Malformed),
            "zero segment size"
        );
        hdr.gso_type = 3; // UDP
        assert_eq!(
            segments(&hdr, &mut p, &mut Vec::new(), |_| {}),
            Err(GsoError::UnsupportedType(3))
        );
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 200,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(
            segments(&hdr, &mut p, &mut Vec::new(), |_| {}),
            Err(GsoError::Malformed)
        );
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert_eq!(
            segments(&hdr, &mut p[..30], &mut Vec::new(), |_| {}),
            Err(GsoError::Malformed)
        );
    }
}
