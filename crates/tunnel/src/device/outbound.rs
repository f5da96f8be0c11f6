//! Interface → network: read a batch of packets from the TUN device (with
//! offloads, each may be a TCP super-packet that is first split into
//! packets of the interface's MTU), encrypt each for the peer its
//! destination routes to, then send each peer's datagrams in as few system
//! calls as possible.

use std::io::{self, Read as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use boringtun::noise::{Tunn, TunnResult};

use super::{BATCH, MAX_PACKET, Shared};
use crate::offload::{VNET_HDR_LEN, VnetHdr, gso};

/// Bytes of encrypted datagrams collected before they are sent.
const OUTBOX_BYTES: usize = 512 * 1024;
/// Room an encapsulation may need beyond the packet (WireGuard header and
/// tag; a handshake initiation when no session is up).
const OVERHEAD: usize = 256;

/// Encrypted datagrams waiting to be sent, back to back in one buffer.
pub(super) struct Outbox {
    buf: Vec<u8>,
    used: usize,
    /// (peer index, start, length), in the order they were encrypted.
    entries: Vec<(usize, usize, usize)>,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Outbox {
            buf: vec![0u8; OUTBOX_BYTES],
            used: 0,
            entries: Vec::with_capacity(BATCH as usize * 2),
        }
    }

    /// Whether a packet of `len` bytes still fits.
    pub(super) fn has_room(&self, len: usize) -> bool {
        self.used + len + OVERHEAD <= self.buf.len()
    }

    /// Encrypts `packet` for the peer its destination routes to and queues
    /// the datagram.
    pub(super) fn encrypt(&mut self, shared: &Shared, packet: &[u8]) {
        if !self.has_room(packet.len()) {
            // Not reached: readers stop while less than a super-packet's
            // worth of room is left.
            return;
        }
        let Some(peer_index) = Tunn::dst_address(packet).and_then(|ip| shared.route_index(ip))
        else {
            shared.no_route_drops.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let peer = &shared.peers[peer_index];
        let dst = &mut self.buf[self.used..];
        let base = dst.as_ptr() as usize;
        let (start, len) = match peer.tunn().encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(out) => (out.as_ptr() as usize - base, out.len()),
            TunnResult::Err(e) => {
                tracing::debug!(tunnel = %shared.name, error = ?e, "encapsulate failed");
                return;
            }
            _ => return,
        };
        // Keep the datagram where the next one starts, so that a run of
        // datagrams is contiguous.
        if start != 0 {
            self.buf
                .copy_within(self.used + start..self.used + start + len, self.used);
        }
        self.entries.push((peer_index, self.used, len));
        self.used += len;
    }

    /// Sends everything queued, each peer's datagrams as one batch in order,
    /// and empties the box.
    pub(super) async fn flush(&mut self, shared: &Shared) {
        let mut i = 0;
        while i < self.entries.len() {
            let peer_index = self.entries[i].0;
            let mut j = i + 1;
            while j < self.entries.len() && self.entries[j].0 == peer_index {
                j += 1;
            }
            let datagrams: Vec<&[u8]> = self.entries[i..j]
                .iter()
                .map(|&(_, start, len)| &self.buf[start..start + len])
                .collect();
            shared
                .send_batch(&shared.peers[peer_index], &datagrams)
                .await;
            i = j;
        }
        self.entries.clear();
        self.used = 0;
    }
}

/// The interface reader task.
pub(super) async fn tun_to_network(shared: Arc<Shared>) -> io::Result<()> {
    let mut src = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    let mut outbox = Outbox::new();
    loop {
        let mut guard = shared.tun.readable().await?;
        // Drain the device while it has packets (at most BATCH, and as many
        // as the outbox holds), then send and wait again.
        let mut exhausted = true;
        for _ in 0..BATCH {
            // A super-packet becomes up to ~45 datagrams of MTU + 32 bytes.
            if !outbox.has_room(2 * MAX_PACKET) {
                break;
            }
            let n = match guard.try_io(|tun| tun.get_ref().read(&mut src)) {
                Ok(result) => result?,
                Err(_would_block) => {
                    exhausted = false;
                    break;
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TUN device closed",
                ));
            }
            if shared.vnet_hdr {
                split_and_encrypt(&shared, &mut src[..n], &mut scratch, &mut outbox);
            } else {
                outbox.encrypt(&shared, &src[..n]);
            }
        }
        drop(guard);
        outbox.flush(&shared).await;
        if exhausted {
            tokio::task::yield_now().await;
        }
    }
}

/// Encrypts the packets one TUN read with a `virtio_net_hdr` stands for.
fn split_and_encrypt(
    shared: &Shared,
    frame: &mut [u8],
    scratch: &mut Vec<u8>,
    outbox: &mut Outbox,
) {
    let Some(hdr) = VnetHdr::parse(frame) else {
        return;
    };
    let packet = &mut frame[VNET_HDR_LEN..];
    if let Err(e) = gso::segments(&hdr, packet, scratch, |p| outbox.encrypt(shared, p)) {
        tracing::debug!(tunnel = %shared.name, error = ?e, ?hdr, "TUN packet dropped");
    }
}
