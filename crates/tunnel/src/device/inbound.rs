//! Network → interface. The UDP readers receive batches of datagrams and
//! hand each to the crypto worker for its sender; the worker authenticates
//! and decrypts each datagram, hands replies (handshake responses, cookies,
//! queued packets) back to the sender and the packets to the TUN device,
//! coalesced where it takes super-packets.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::pool::{Buffers, Workers};
use super::{BATCH, BUFFER_SIZE, Shared, offset_in};
use crate::offload::VnetHdr;
use crate::offload::gro::Coalescer;
use crate::udp::Received;

enum Decapsulated {
    Reply(usize, usize),
    ToTun(usize, usize, IpAddr),
    Nothing,
}

/// One received batch: the buffer and the messages in it.
pub(super) struct CipherBatch {
    buf: Vec<u8>,
    messages: Vec<Received>,
}

/// What the UDP readers and the decrypting workers share.
pub(super) struct InboundPool {
    workers: Workers<CipherBatch>,
    buffers: Buffers<CipherBatch>,
}

/// Creates the pool and the worker futures (to be spawned by the caller).
pub(super) fn start(
    shared: &Arc<Shared>,
    count: usize,
) -> (
    Arc<InboundPool>,
    Vec<impl Future<Output = io::Result<()>> + Send + 'static>,
) {
    let (workers, receivers) = Workers::new(count);
    let pool = Arc::new(InboundPool {
        workers,
        buffers: Buffers::new(),
    });
    let tasks = receivers
        .into_iter()
        .map(|jobs| decrypt_worker(Arc::clone(shared), Arc::clone(&pool), jobs))
        .collect();
    (pool, tasks)
}

/// The UDP reader task of one socket (`v6`: the IPv6 one).
pub(super) async fn network_to_tun(
    shared: Arc<Shared>,
    pool: Arc<InboundPool>,
    v6: bool,
) -> io::Result<()> {
    let socket = if v6 {
        shared
            .udp6
            .as_ref()
            .expect("udp6 task only started with a v6 socket")
    } else {
        &shared.udp4
    };
    let mut handled: u32 = 0;
    loop {
        handled += 1;
        if handled.is_multiple_of(BATCH) {
            tokio::task::yield_now().await;
        }
        let mut batch = pool.buffers.take(|| CipherBatch {
            buf: vec![0u8; BUFFER_SIZE],
            messages: Vec::new(),
        });
        // Fast path: take what is queued; wait only when nothing is.
        let received = match socket.try_recv(&mut batch.buf, &mut batch.messages) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                socket.recv(&mut batch.buf, &mut batch.messages).await
            }
            other => other,
        };
        match received {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                batch.messages.clear();
                pool.buffers.put(batch);
                continue;
            }
            Err(e) => return Err(e),
        }
        // A GRO batch has one sender; its worker is that sender's. Without
        // GRO a batch may mix senders, so one worker takes them all (order
        // per sender is kept either way).
        let key = match (socket.gro(), batch.messages.first()) {
            (true, Some(first)) => sender_key(first.from),
            _ => 0,
        };
        pool.workers.dispatch(key, batch).await?;
    }
}

/// Which worker a sender's datagrams go to (always the same one).
fn sender_key(from: SocketAddr) -> usize {
    let ip = match from.ip() {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => v6.octets().chunks(4).fold(0u32, |h, c| {
            h.rotate_left(5) ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]])
        }),
    };
    (ip ^ u32::from(from.port()).rotate_left(16)) as usize
}

/// A crypto worker: decrypts the batches queued for it.
async fn decrypt_worker(
    shared: Arc<Shared>,
    pool: Arc<InboundPool>,
    mut jobs: tokio::sync::mpsc::Receiver<CipherBatch>,
) -> io::Result<()> {
    let mut dst = vec![0u8; BUFFER_SIZE];
    let mut coalescer = Coalescer::default();
    while let Some(mut batch) = jobs.recv().await {
        for received in &batch.messages {
            let from = unmapped(received.from);
            for datagram in received.datagrams(&batch.buf) {
                handle_datagram(&shared, datagram, from, &mut dst, &mut coalescer).await;
            }
            // What one sender's message held for the interface is written
            // now, coalesced where the device takes super-packets.
            coalescer.finish(&mut |hdr: &VnetHdr, p: &[u8]| shared.write_tun(hdr, p));
        }
        batch.messages.clear();
        pool.buffers.put(batch);
    }
    Ok(())
}

/// An IPv4-mapped IPv6 source as the IPv4 address it is.
fn unmapped(from: SocketAddr) -> SocketAddr {
    match from {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => from,
        },
        v4 => v4,
    }
}

/// The peer a datagram claims to be from, if it is one of ours.
fn peer_of(shared: &Shared, datagram: &[u8]) -> Option<usize> {
    match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::HandshakeInit(init)) => {
            parse_handshake_anon(&shared.static_private, &shared.static_public, &init)
                .ok()
                .and_then(|half| shared.by_key.get(&half.peer_static_public).copied())
        }
        Ok(Packet::HandshakeResponse(p)) => shared.by_index.get(&(p.receiver_idx >> 8)).copied(),
        Ok(Packet::PacketCookieReply(p)) => shared.by_index.get(&(p.receiver_idx >> 8)).copied(),
        Ok(Packet::PacketData(p)) => shared.by_index.get(&(p.receiver_idx >> 8)).copied(),
        Err(_) => None,
    }
}

async fn handle_datagram(
    shared: &Shared,
    datagram: &[u8],
    from: SocketAddr,
    dst: &mut [u8],
    coalescer: &mut Coalescer,
) {
    let Some(peer) = peer_of(shared, datagram).map(|i| &shared.peers[i]) else {
        return;
    };
    if peer.blocked.load(Ordering::Relaxed) {
        return;
    }
    let base = dst.as_ptr() as usize;
    let action = match peer.tunn().decapsulate(Some(from.ip()), datagram, dst) {
        TunnResult::WriteToNetwork(out) => Decapsulated::Reply(offset_in(base, out), out.len()),
        TunnResult::WriteToTunnelV4(out, ip) => {
            Decapsulated::ToTun(offset_in(base, out), out.len(), IpAddr::V4(ip))
        }
        TunnResult::WriteToTunnelV6(out, ip) => {
            Decapsulated::ToTun(offset_in(base, out), out.len(), IpAddr::V6(ip))
        }
        TunnResult::Done => Decapsulated::Nothing,
        TunnResult::Err(e) => {
            tracing::trace!(tunnel = %shared.name, %from, error = ?e, "datagram rejected");
            return;
        }
    };
    // Authenticated: this is where the peer is now (WireGuard roaming),
    // unless its configured endpoint is pinned.
    peer.authenticated_from(from, &shared.name);
    match action {
        Decapsulated::Reply(offset, len) => {
            shared.send(peer, &dst[offset..offset + len]).await;
            // Packets queued while the handshake was pending.
            loop {
                let next = match peer.tunn().decapsulate(None, &[], dst) {
                    TunnResult::WriteToNetwork(out) => Some((offset_in(base, out), out.len())),
                    _ => None,
                };
                let Some((offset, len)) = next else { break };
                shared.send(peer, &dst[offset..offset + len]).await;
            }
        }
        Decapsulated::ToTun(offset, len, source) => {
            if peer.source_allowed(source) {
                peer.rx_packets.fetch_add(1, Ordering::Relaxed);
                let packet = &dst[offset..offset + len];
                let mut write = |hdr: &VnetHdr, p: &[u8]| shared.write_tun(hdr, p);
                if shared.coalesce.load(Ordering::Relaxed) {
                    coalescer.push(packet, &mut write);
                } else {
                    write(&VnetHdr::data_valid(), packet);
                }
            } else {
                shared.source_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Decapsulated::Nothing => {}
    }
}
