//! Interface → network. The TUN reader reads a batch of packets, sorts them
//! by the peer their destination routes to and hands each peer's packets to
//! that peer's crypto worker. The worker splits TCP super-packets (with
//! offloads) into packets of the interface's MTU, encrypts them and sends
//! the datagrams in as few system calls as possible; splitting and
//! encrypting on one core keeps the bytes in its cache.

use std::io::{self, Read as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use boringtun::noise::{Tunn, TunnResult};

use super::pool::{Buffers, Workers};
use super::{BATCH, MAX_PACKET, Shared};
use crate::offload::{VNET_HDR_LEN, VnetHdr, gso};

/// Plaintext bytes one reader round collects before handing them over.
const ROUND_BYTES: usize = 512 * 1024;
/// Bytes of encrypted datagrams a worker collects before it sends them.
const OUTBOX_BYTES: usize = 512 * 1024;
/// Room an encapsulation may need beyond the packet (WireGuard header and
/// tag; a handshake initiation when no session is up).
const OVERHEAD: usize = 256;

/// Plaintext TUN frames (with their `virtio_net_hdr` where the device has
/// one) for one peer, back to back.
#[derive(Debug, Default)]
pub(super) struct PlainBatch {
    peer: usize,
    buf: Vec<u8>,
    /// (start, length) of each frame in `buf`, in order.
    packets: Vec<(usize, usize)>,
}

impl PlainBatch {
    fn push(&mut self, packet: &[u8]) {
        self.packets.push((self.buf.len(), packet.len()));
        self.buf.extend_from_slice(packet);
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.packets.clear();
    }
}

/// What the TUN reader and the encrypting workers share.
pub(super) struct OutboundPool {
    workers: Workers<PlainBatch>,
    buffers: Buffers<PlainBatch>,
}

/// Creates the pool and the worker futures (to be spawned by the caller).
pub(super) fn start(
    shared: &Arc<Shared>,
    count: usize,
) -> (
    Arc<OutboundPool>,
    Vec<impl Future<Output = io::Result<()>> + Send + 'static>,
) {
    let (workers, receivers) = Workers::new(count);
    let pool = Arc::new(OutboundPool {
        workers,
        buffers: Buffers::new(),
    });
    let tasks = receivers
        .into_iter()
        .map(|jobs| encrypt_worker(Arc::clone(shared), Arc::clone(&pool), jobs))
        .collect();
    (pool, tasks)
}

/// Encrypted datagrams waiting to be sent, back to back in one buffer.
struct Outbox {
    buf: Vec<u8>,
    used: usize,
    /// (start, length), in the order they were encrypted.
    entries: Vec<(usize, usize)>,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            buf: vec![0u8; OUTBOX_BYTES],
            used: 0,
            entries: Vec::with_capacity(BATCH as usize * 2),
        }
    }

    fn has_room(&self, len: usize) -> bool {
        self.used + len + OVERHEAD <= self.buf.len()
    }

    /// Encrypts `packet` for `peer` and queues the datagram (the caller
    /// checked [`Outbox::has_room`]).
    fn encrypt(&mut self, shared: &Shared, peer: usize, packet: &[u8]) {
        let dst = &mut self.buf[self.used..];
        let base = dst.as_ptr() as usize;
        let (start, len) = match shared.peers[peer].tunn().encapsulate(packet, dst) {
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
        self.entries.push((self.used, len));
        self.used += len;
    }

    /// Sends everything queued to `peer`, in order, and empties the box.
    async fn flush(&mut self, shared: &Shared, peer: usize) {
        let datagrams: Vec<&[u8]> = self
            .entries
            .iter()
            .map(|&(start, len)| &self.buf[start..start + len])
            .collect();
        shared.send_batch(&shared.peers[peer], &datagrams).await;
        self.entries.clear();
        self.used = 0;
    }
}

/// A crypto worker: encrypts and sends the batches queued for it.
async fn encrypt_worker(
    shared: Arc<Shared>,
    pool: Arc<OutboundPool>,
    mut jobs: tokio::sync::mpsc::Receiver<PlainBatch>,
) -> io::Result<()> {
    let mut outbox = Outbox::new();
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    while let Some(mut batch) = jobs.recv().await {
        let peer = batch.peer;
        for i in 0..batch.packets.len() {
            // A super-packet becomes up to ~45 datagrams of MTU + 32 bytes.
            if !outbox.has_room(2 * MAX_PACKET) {
                outbox.flush(&shared, peer).await;
            }
            let (start, len) = batch.packets[i];
            let frame = &mut batch.buf[start..start + len];
            if shared.vnet_hdr {
                split(&shared, frame, &mut scratch, |p| {
                    outbox.encrypt(&shared, peer, p)
                });
            } else {
                outbox.encrypt(&shared, peer, frame);
            }
        }
        outbox.flush(&shared, peer).await;
        batch.clear();
        pool.buffers.put(batch);
    }
    Ok(())
}

/// One reader round's packets, by peer.
struct Round<'p> {
    pool: &'p OutboundPool,
    batches: Vec<PlainBatch>,
    bytes: usize,
}

impl Round<'_> {
    /// Files a TUN frame under the peer its destination routes to.
    fn add(&mut self, shared: &Shared, frame: &[u8]) {
        let packet = if shared.vnet_hdr {
            frame.get(VNET_HDR_LEN..).unwrap_or_default()
        } else {
            frame
        };
        let Some(peer) = Tunn::dst_address(packet).and_then(|ip| shared.route_index(ip)) else {
            shared.no_route_drops.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.bytes += frame.len();
        if let Some(batch) = self.batches.iter_mut().find(|b| b.peer == peer) {
            batch.push(frame);
            return;
        }
        let mut batch = self.pool.buffers.take(PlainBatch::default);
        batch.peer = peer;
        batch.push(frame);
        self.batches.push(batch);
    }

    /// Hands each peer's packets to its worker.
    async fn dispatch(&mut self) -> io::Result<()> {
        for batch in self.batches.drain(..) {
            self.pool.workers.dispatch(batch.peer, batch).await?;
        }
        self.bytes = 0;
        Ok(())
    }
}

/// The interface reader task.
pub(super) async fn tun_to_network(shared: Arc<Shared>, pool: Arc<OutboundPool>) -> io::Result<()> {
    let mut src = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut round = Round {
        pool: &pool,
        batches: Vec::new(),
        bytes: 0,
    };
    loop {
        let mut guard = shared.tun.readable().await?;
        // Drain the device while it has packets (at most BATCH reads and
        // ROUND_BYTES), then hand them over and wait again.
        let mut exhausted = true;
        for _ in 0..BATCH {
            if round.bytes >= ROUND_BYTES {
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
            round.add(&shared, &src[..n]);
        }
        drop(guard);
        round.dispatch().await?;
        if exhausted {
            tokio::task::yield_now().await;
        }
    }
}

/// Calls `emit` with each packet a TUN frame with a `virtio_net_hdr` stands
/// for.
fn split(shared: &Shared, frame: &mut [u8], scratch: &mut Vec<u8>, emit: impl FnMut(&[u8])) {
    let Some(hdr) = VnetHdr::parse(frame) else {
        return;
    };
    let packet = &mut frame[VNET_HDR_LEN..];
    if let Err(e) = gso::segments(&hdr, packet, scratch, emit) {
        tracing::debug!(tunnel = %shared.name, error = ?e, ?hdr, "TUN packet dropped");
    }
}
