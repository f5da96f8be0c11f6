//! Batched UDP I/O for the WireGuard socket: many datagrams per system call.
//!
//! Sending: a run of equally sized datagrams to one endpoint (the last may be
//! shorter) goes out as one `sendmsg` with `UDP_SEGMENT` (UDP GSO, Linux ≥
//! 4.18): the kernel splits it, so one syscall carries up to 64 datagrams.
//! Where GSO is missing or refused (`EIO`/`EINVAL`, e.g. an egress device
//! without checksum offload; `EMSGSIZE`, datagrams above the path MTU that
//! only IP fragmentation can carry), it is switched off for the socket and
//! runs go out with one `sendmmsg` each instead.
//!
//! Receiving: with `UDP_GRO` (Linux ≥ 5.0) one `recvmsg` returns up to 64 KB
//! of back-to-back datagrams from one sender with their segment size in a
//! control message; without it, one `recvmmsg` fills up to [`MMSG_SLOTS`]
//! slots of the buffer with a datagram each (any senders).
//!
//! All calls go through nix's safe wrappers (no `unsafe` here).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt,
    recvmmsg, recvmsg, sendmmsg, sendmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The kernel's limit on segments in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Largest payload of one GSO send (an IP packet's length field).
const MAX_GSO_BYTES: usize = 65_000;
/// Datagrams one `recvmmsg` takes where there is no GRO; the receive buffer
/// is cut into this many slots (so a datagram longer than a slot, i.e. a
/// peer MTU above ~8 KB, is dropped there; GRO has no such limit).
pub(crate) const MMSG_SLOTS: usize = 8;

/// A UDP socket with batched send and receive.
#[derive(Debug)]
pub(crate) struct BatchSocket {
    socket: UdpSocket,
    gso: AtomicBool,
    gro: bool,
}

/// One received message: at `offset` in the buffer, `len` bytes of
/// back-to-back datagrams of `segment` bytes each (the last may be
/// shorter), all from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub offset: usize,
    pub len: usize,
    pub segment: usize,
    pub from: SocketAddr,
}

impl Received {
    /// The datagrams of the message inside `buf`.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        buf[self.offset..self.offset + self.len].chunks(self.segment.max(1))
    }
}

impl BatchSocket {
    /// Wraps `socket`, probing for UDP GSO and switching UDP GRO on where the
    /// kernel has them.
    pub fn new(socket: UdpSocket) -> Self {
        let gso = getsockopt(&socket, sockopt::UdpGsoSegment).is_ok();
        let gro = setsockopt(&socket, sockopt::UdpGroSegment, &true).is_ok();
        tracing::debug!(gso, gro, "UDP offloads");
        BatchSocket {
            socket,
            gso: AtomicBool::new(gso),
            gro,
        }
    }

    /// The underlying socket (single datagrams: handshakes, timers).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Whether sends still use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether receives use UDP GRO.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Sends `datagrams` (in order) to `to`, waiting while the socket buffer
    /// is full. Returns how many went out.
    pub async fn send_all(&self, to: SocketAddr, datagrams: &[&[u8]]) -> io::Result<usize> {
        let mut sent = 0;
        for run in runs(datagrams) {
            sent += self.send_run(to, &datagrams[run]).await?;
        }
        Ok(sent)
    }

    async fn send_run(&self, to: SocketAddr, run: &[&[u8]]) -> io::Result<usize> {
        let address = SockaddrStorage::from(to);
        if run.len() > 1 && self.gso() {
            let segment = run[0].len() as u16;
            let slices: Vec<IoSlice<'_>> = run.iter().map(|d| IoSlice::new(d)).collect();
            let result = self
                .socket
                .async_io(Interest::WRITABLE, || {
                    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
                    sendmsg(
                        self.socket.as_raw_fd(),
                        &slices,
                        &cmsg,
                        MsgFlags::empty(),
                        Some(&address),
                    )
                    .map_err(io::Error::from)
                })
                .await;
            match result {
                Ok(_) => return Ok(run.len()),
                Err(e)
                    if matches!(
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        Errno::EIO | Errno::EINVAL | Errno::EMSGSIZE | Errno::ENOPROTOOPT
                    ) =>
                {
                    tracing::info!(error = %e, "UDP GSO refused; sending datagram batches without it");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.send_mmsg(&address, run).await
    }

    /// One `sendmmsg` for all of `run` (repeated for what the kernel did not
    /// take).
    async fn send_mmsg(&self, address: &SockaddrStorage, run: &[&[u8]]) -> io::Result<usize> {
        let mut done = 0;
        while done < run.len() {
            let rest = &run[done..];
            let slices: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|d| [IoSlice::new(d)]).collect();
            let addresses: Vec<Option<SockaddrStorage>> = vec![Some(*address); rest.len()];
            let n = self
                .socket
                .async_io(Interest::WRITABLE, || {
                    let mut headers =
                        MultiHeaders::<SockaddrStorage>::preallocate(rest.len(), None);
                    let no_cmsgs: [ControlMessage<'_>; 0] = [];
                    sendmmsg(
                        self.socket.as_raw_fd(),
                        &mut headers,
                        &slices,
                        &addresses,
                        no_cmsgs,
                        MsgFlags::empty(),
                    )
                    .map(|results| results.count())
                    .map_err(io::Error::from)
                })
                .await?;
            done += n.max(1);
        }
        Ok(done)
    }

    /// Receives one batch into `buf` without waiting (`WouldBlock` when
    /// none is queued); its messages are appended to `out`.
    pub fn try_recv(&self, buf: &mut [u8], out: &mut Vec<Received>) -> io::Result<()> {
        self.socket
            .try_io(Interest::READABLE, || self.recv_now(buf, out))
    }

    /// Receives one batch, waiting for it.
    pub async fn recv(&self, buf: &mut [u8], out: &mut Vec<Received>) -> io::Result<()> {
        self.socket
            .async_io(Interest::READABLE, || self.recv_now(buf, out))
            .await
    }

    fn recv_now(&self, buf: &mut [u8], out: &mut Vec<Received>) -> io::Result<()> {
        if self.gro {
            out.push(self.recv_gro(buf)?);
            Ok(())
        } else {
            self.recv_mmsg(buf, out)
        }
    }

    fn recv_gro(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut cmsg = nix::cmsg_space!(i32);
        let mut iov = [IoSliceMut::new(buf)];
        let message = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(cmsg.as_mut_slice()),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let len = message.bytes;
        let mut segment = len;
        if let Ok(cmsgs) = message.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = c
                    && size > 0
                {
                    segment = size as usize;
                }
            }
        }
        let from = message
            .address
            .as_ref()
            .and_then(to_socket_addr)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?;
        Ok(Received {
            offset: 0,
            len,
            segment,
            from,
        })
    }

    fn recv_mmsg(&self, buf: &mut [u8], out: &mut Vec<Received>) -> io::Result<()> {
        let slot = buf.len() / MMSG_SLOTS;
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = buf
            .chunks_mut(slot)
            .take(MMSG_SLOTS)
            .map(|c| [IoSliceMut::new(c)])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let messages = recvmmsg(
            self.socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        for (i, message) in messages.enumerate() {
            let from = message.address.as_ref().and_then(to_socket_addr);
            match from {
                Some(from) if !message.flags.contains(MsgFlags::MSG_TRUNC) => out.push(Received {
                    offset: i * slot,
                    len: message.bytes,
                    segment: message.bytes,
                    from,
                }),
                _ => tracing::debug!(
                    bytes = message.bytes,
                    "datagram dropped: truncated or no source"
                ),
            }
        }
        Ok(())
    }

    /// Switches UDP GRO off for this socket's receives (tests of the
    /// fallback path).
    #[cfg(test)]
    fn without_offloads(mut self) -> Self {
        let _ = setsockopt(&self.socket, sockopt::UdpGroSegment, &false);
        self.gro = false;
        self.gso.store(false, Ordering::Relaxed);
        self
    }
}

fn to_socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    let v6 = address.as_sockaddr_in6()?;
    Some(SocketAddr::V6((*v6).into()))
}

/// Splits `datagrams` into GSO runs: consecutive datagrams of the first one's
/// size, closed by at most one shorter datagram, at most [`MAX_SEGMENTS`]
/// and [`MAX_GSO_BYTES`] each.
pub(crate) fn runs(datagrams: &[&[u8]]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < datagrams.len() {
        let size = datagrams[start].len();
        let limit = MAX_SEGMENTS.min((MAX_GSO_BYTES / size.max(1)).max(1));
        let mut end = start + 1;
        while end < datagrams.len() && end - start < limit {
            let len = datagrams[end].len();
            if len > size || size == 0 {
                break;
            }
            end += 1;
            if len < size {
                break;
            }
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|&n| vec![0u8; n]).collect()
    }

    fn runs_of(sizes_: &[usize]) -> Vec<std::ops::Range<usize>> {
        let owned = sizes(sizes_);
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        runs(&refs)
    }

    #[test]
    fn equal_sizes_form_one_run_closed_by_a_shorter_one() {
        assert_eq!(runs_of(&[1452, 1452, 1452, 700, 1452]), vec![0..4, 4..5]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run() {
        assert_eq!(runs_of(&[100, 1452, 1452]), vec![0..1, 1..3]);
        assert_eq!(runs_of(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn runs_respect_the_kernel_limits() {
        let many = vec![1000; 100];
        let r = runs_of(&many);
        assert!(
            r.iter()
                .all(|r| r.len() * 1000 <= MAX_GSO_BYTES && r.len() <= MAX_SEGMENTS)
        );
        assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), 100);
        let tiny = vec![32; 200];
        assert!(runs_of(&tiny).iter().all(|r| r.len() <= MAX_SEGMENTS));
    }

    #[test]
    fn received_batches_split_at_the_segment_size() {
        let buf = [0u8; 10];
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let r = Received {
            offset: 0,
            len: 10,
            segment: 4,
            from,
        };
        let lens: Vec<usize> = r.datagrams(&buf).map(<[u8]>::len).collect();
        assert_eq!(lens, vec![4, 4, 2]);
        let r = Received {
            offset: 6,
            len: 3,
            segment: 3,
            from,
        };
        assert_eq!(r.datagrams(&buf).count(), 1);
    }

    /// Two real sockets on loopback (no root needed): `send_all` to a
    /// receiver, then everything received, datagram by datagram.
    async fn round_trip(offloads: bool, sizes_: &[usize]) -> Vec<Vec<u8>> {
        let bind = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            UdpSocket::from_std(s).unwrap()
        };
        let (tx, rx) = (BatchSocket::new(bind()), BatchSocket::new(bind()));
        let (tx, rx) = if offloads {
            (tx, rx)
        } else {
            (tx.without_offloads(), rx.without_offloads())
        };
        let to = rx.socket().local_addr().unwrap();
        let sent: Vec<Vec<u8>> = sizes_
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8 + 1; n])
            .collect();
        let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        assert_eq!(tx.send_all(to, &refs).await.unwrap(), sent.len());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_535 + 256];
        while got.len() < sent.len() {
            let mut messages = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                rx.recv(&mut buf, &mut messages),
            )
            .await
            .expect("datagrams arrive on loopback")
            .unwrap();
            for m in messages {
                assert_eq!(m.from, tx.socket().local_addr().unwrap());
                got.extend(m.datagrams(&buf).map(<[u8]>::to_vec));
            }
        }
        got
    }

    #[tokio::test]
    async fn batches_arrive_whole_and_in_order_with_and_without_offloads() {
        let sizes_ = [1452, 1452, 1452, 600, 1452, 1452, 90, 32, 32, 1452];
        for offloads in [true, false] {
            let got = round_trip(offloads, &sizes_).await;
            let lens: Vec<usize> = got.iter().map(Vec::len).collect();
            assert_eq!(lens, sizes_, "offloads {offloads}");
            for (i, d) in got.iter().enumerate() {
                assert!(d.iter().all(|&b| b == i as u8 + 1), "datagram {i} intact");
            }
        }
    }
}
