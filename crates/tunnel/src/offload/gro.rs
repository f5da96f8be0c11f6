//! Coalescing on the way in: consecutive decrypted TCP segments of one flow
//! (in sequence, same headers apart from lengths, IDs and checksums, only
//! the last one short or pushed) become one super-packet with a
//! `virtio_net_hdr` describing its segmentation, so that the kernel takes
//! them with one TUN write, as its GRO would. Only adjacent packets are
//! joined, so no flow's packets are ever reordered; everything else is
//! written as it came.

use super::{
    F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, PROTO_TCP, TcpLayout, VnetHdr, addresses, checksum,
    set_ip_length,
};

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Largest IP packet (the length fields are 16 bits).
const MAX_SUPER_PACKET: usize = 65_535;
/// Segments per super-packet (the kernel's `UDP_MAX_SEGMENTS`-like bound
/// keeps GSO work per write small).
const MAX_SEGMENTS: usize = 64;

/// The group being built.
#[derive(Debug, Clone, Copy)]
struct Group {
    layout: TcpLayout,
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// A short or pushed segment ended it: nothing may follow.
    closed: bool,
}

/// Joins runs of TCP segments; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    packet: Vec<u8>,
    group: Option<Group>,
}

impl Coalescer {
    /// Takes the next decrypted packet; calls `write` with each finished
    /// frame (header, packet).
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&VnetHdr, &[u8])) {
        if let Some(group) = &mut self.group
            && let Some(payload) = appendable(group, &self.packet, packet)
        {
            let pushed = tcp_flags(packet, &group.layout) & TCP_PSH != 0;
            self.packet.extend_from_slice(payload);
            if pushed {
                // Segmentation puts PSH on the last segment only.
                self.packet[group.layout.ip_len + 13] |= TCP_PSH;
            }
            group.segments += 1;
            group.next_seq = group.next_seq.wrapping_add(payload.len() as u32);
            group.closed = payload.len() < group.mss || pushed || group.segments >= MAX_SEGMENTS;
            return;
        }
        self.finish(write);
        match start(packet) {
            Some(group) => {
                self.packet.clear();
                self.packet.extend_from_slice(packet);
                self.group = Some(group);
            }
            None => write(&VnetHdr::data_valid(), packet),
        }
    }

    /// Writes out the group being built, if any.
    pub fn finish(&mut self, write: &mut impl FnMut(&VnetHdr, &[u8])) {
        let Some(group) = self.group.take() else {
            return;
        };
        if group.segments == 1 {
            write(&VnetHdr::data_valid(), &self.packet);
            return;
        }
        let layout = group.layout;
        let total = self.packet.len();
        set_ip_length(&mut self.packet, &layout, total);
        // The checksum field holds the pseudo-header sum; the kernel
        // completes it per segment (F_NEEDS_CSUM), as for its own GSO.
        let Some((src, dst)) = addresses(&self.packet) else {
            return;
        };
        let tcp_len = total - layout.ip_len;
        let pseudo = checksum::fold(checksum::pseudo_header(src, dst, PROTO_TCP, tcp_len));
        let at = layout.ip_len + 16;
        self.packet[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if layout.version == 4 {
                GSO_TCPV4
            } else {
                GSO_TCPV6
            },
            hdr_len: layout.headers() as u16,
            gso_size: group.mss as u16,
            csum_start: layout.ip_len as u16,
            csum_offset: 16,
        };
        write(&hdr, &self.packet);
    }
}

fn tcp_flags(packet: &[u8], layout: &TcpLayout) -> u8 {
    packet[layout.ip_len + 13]
}

fn tcp_seq(packet: &[u8], layout: &TcpLayout) -> u32 {
    let t = layout.ip_len;
    u32::from_be_bytes([packet[t + 4], packet[t + 5], packet[t + 6], packet[t + 7]])
}

/// A new group for `packet` when it is a TCP segment with data and only
/// ACK (and perhaps PSH) set.
fn start(packet: &[u8]) -> Option<Group> {
    let layout = TcpLayout::of(packet)?;
    let payload = packet.len() - layout.headers();
    let flags = tcp_flags(packet, &layout);
    if payload == 0 || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    Some(Group {
        layout,
        mss: payload,
        segments: 1,
        next_seq: tcp_seq(packet, &layout).wrapping_add(payload as u32),
        closed: flags & TCP_PSH != 0,
    })
}

/// `packet`'s payload when it may be appended to the group whose first
/// packet (headers) is `head`.
fn appendable<'p>(group: &Group, head: &[u8], packet: &'p [u8]) -> Option<&'p [u8]> {
    if group.closed {
        return None;
    }
    let layout = group.layout;
    if TcpLayout::of(packet)? != layout {
        return None;
    }
    let payload = &packet[layout.headers()..];
    if payload.is_empty()
        || payload.len() > group.mss
        || head.len() + payload.len() > MAX_SUPER_PACKET
        || tcp_seq(packet, &layout) != group.next_seq
        || tcp_flags(packet, &layout) & !TCP_PSH != TCP_ACK
    {
        return None;
    }
    let same = |range: std::ops::Range<usize>| head[range.clone()] == packet[range];
    let ip_same = if layout.version == 4 {
        // Version/IHL/TOS; flags/fragment, TTL, protocol; addresses; options.
        same(0..2) && same(6..10) && same(12..layout.ip_len)
    } else {
        // Version/class/flow label; next header, hop limit, addresses.
        same(0..4) && same(6..40)
    };
    let t = layout.ip_len;
    // Ports; acknowledgement; data offset; window, urgent pointer, options.
    let tcp_same = same(t..t + 4)
        && same(t + 8..t + 13)
        && same(t + 14..t + 16)
        && same(t + 18..layout.headers());
    (ip_same && tcp_same).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::super::gso;
    use super::super::testing::*;
    use super::*;

    /// Runs `packets` through a coalescer; returns the frames written.
    fn coalesce(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut c = Coalescer::default();
        let mut write = |h: &VnetHdr, p: &[u8]| out.push((*h, p.to_vec()));
        for p in packets {
            c.push(p, &mut write);
        }
        c.finish(&mut write);
        out
    }

    /// `count` in-sequence segments of `mss` bytes (the last `last` bytes).
    fn flow(v6: bool, mss: usize, count: usize, last: usize) -> Vec<Vec<u8>> {
        let mut seq = 5000u32;
        (0..count)
            .map(|i| {
                let len = if i + 1 == count { last } else { mss };
                let payload: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
                let p = tcp_id(v6, seq, TCP_ACK, &payload, 0x1234 + i as u16);
                seq += len as u32;
                p
            })
            .collect()
    }

    /// What the kernel does with a coalesced frame: segment it again.
    fn resegment((hdr, packet): &(VnetHdr, Vec<u8>)) -> Vec<Vec<u8>> {
        let mut p = packet.clone();
        let mut out = Vec::new();
        gso::segments(hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        out
    }

    #[test]
    fn a_run_of_segments_becomes_one_frame_that_splits_back() {
        for v6 in [false, true] {
            let mss = if v6 { 1360 } else { 1380 };
            // Last segment MSS−1, MSS (then a full run) and a lone MSS+1 case.
            for last in [mss - 1, mss] {
                let packets = flow(v6, mss, 10, last);
                let frames = coalesce(&packets);
                assert_eq!(frames.len(), 1, "v6 {v6} last {last}");
                let (hdr, frame) = &frames[0];
                assert_eq!(hdr.gso_size as usize, mss);
                assert_eq!(hdr.flags, F_NEEDS_CSUM);
                assert_eq!(
                    frame.len(),
                    packets.iter().map(|p| payload(p).len()).sum::<usize>()
                        + if v6 { 60 } else { 40 }
                );
                assert_eq!(resegment(&frames[0]), packets, "resegmented = original");
            }
            // A segment longer than the first (MSS+1) cannot follow it.
            let mut packets = flow(v6, mss, 2, mss);
            let longer = tcp(
                v6,
                seq(&packets[1]) + mss as u32,
                TCP_ACK,
                &vec![1u8; mss + 1],
            );
            packets.push(longer);
            let frames = coalesce(&packets);
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[1].0, VnetHdr::data_valid());
        }
    }

    #[test]
    fn nothing_follows_a_short_or_pushed_segment() {
        let mut packets = flow(false, 1000, 3, 500);
        packets.extend(flow(false, 1000, 1, 1000).into_iter().map(|mut p| {
            // In sequence after the short one.
            let s = 5000u32 + 2500;
            p[24..28].copy_from_slice(&s.to_be_bytes());
            p
        }));
        assert_eq!(coalesce(&packets).len(), 2);
        let mut pushed = flow(false, 1000, 3, 1000);
        pushed[1] = tcp_id(false, 6000, TCP_ACK | TCP_PSH, &pushed[1][40..], 0x1235);
        let frames = coalesce(&pushed);
        assert_eq!(frames.len(), 2, "PSH closes the first frame");
        assert_eq!(resegment(&frames[0]), pushed[..2].to_vec());
    }

    #[test]
    fn other_packets_pass_unchanged_and_in_order() {
        let tcp_run = flow(false, 1000, 3, 1000);
        let mut udp = tcp(false, 1, TCP_ACK, b"datagram");
        udp[9] = 17;
        let syn = tcp(false, 1, 0x02, b"");
        let ack_only = tcp(false, 1, TCP_ACK, b"");
        let packets = vec![
            udp.clone(),
            tcp_run[0].clone(),
            tcp_run[1].clone(),
            syn.clone(),
            tcp_run[2].clone(),
            ack_only.clone(),
        ];
        let frames = coalesce(&packets);
        let plain: Vec<Vec<u8>> = frames.iter().flat_map(resegment).collect();
        assert_eq!(plain, packets, "same packets, same order");
        assert_eq!(frames.len(), 5, "only the two adjacent segments joined");
    }

    #[test]
    fn another_flow_or_a_gap_starts_a_new_frame() {
        let a = flow(false, 1000, 2, 1000);
        let mut other_port = a[1].clone();
        other_port[20..22].copy_from_slice(&40001u16.to_be_bytes());
        assert_eq!(coalesce(&[a[0].clone(), other_port]).len(), 2);
        let gap = tcp(false, 5000 + 1001, TCP_ACK, &[0u8; 1000]);
        assert_eq!(coalesce(&[a[0].clone(), gap]).len(), 2);
        let mut ttl = a[1].clone();
        ttl[8] = 63;
        assert_eq!(coalesce(&[a[0].clone(), ttl]).len(), 2);
    }

    #[test]
    fn super_packets_stay_under_64_kib() {
        let packets = flow(false, 1380, 100, 1380);
        let frames = coalesce(&packets);
        assert!(frames.iter().all(|(_, p)| p.len() <= MAX_SUPER_PACKET));
        let back: Vec<Vec<u8>> = frames.iter().flat_map(resegment).collect();
        assert_eq!(back, packets);
    }
}
