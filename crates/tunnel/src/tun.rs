//! The Linux TUN device: the only place in this crate that needs `unsafe`
//! (the `ioctl`s `TUNSETIFF`, `TUNSETOFFLOAD` and `TUNGETIFF`; everything
//! else goes through `std::fs::File`).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// Prefix every packet with a `virtio_net_hdr` (see [`crate::offload`]).
const IFF_VNET_HDR: libc::c_int = 0x4000;
/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: the kernel may hand us packets
/// with partial checksums and TCP super-packets, and we may hand it the
/// same. Not `TUN_F_TSO_ECN` or UDP segmentation: the kernel segments those
/// itself before they reach us.
const OFFLOADS: libc::c_ulong = 0x01 | 0x02 | 0x04;

/// An open TUN device and whether its packets carry a `virtio_net_hdr`
/// (with TSO and checksum offload switched on).
pub(crate) struct OpenTun {
    pub file: File,
    pub vnet_hdr: bool,
}

/// `struct ifreq` with the flags member of its union; padded to the kernel's
/// 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and attaches it to a new (or existing, unused) TUN
/// interface named `name` in the calling thread's network namespace, with
/// `IFF_VNET_HDR` and TSO/checksum offloads where the kernel takes them
/// (else plain packets). The interface is non-persistent: it disappears
/// when the returned file (and every duplicate of it) is closed. The file is
/// non-blocking.
pub(crate) fn open_tun(name: &str) -> io::Result<OpenTun> {
    match open_with(name, IFF_VNET_HDR) {
        Ok(file) => {
            // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is
            // open and owned by `file`.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, OFFLOADS) };
            if rc < 0 {
                // The header still works without offloads: packets are then
                // plain, with complete checksums.
                tracing::debug!(interface = name, error = %io::Error::last_os_error(), "TUN offloads refused");
            }
            Ok(OpenTun {
                file,
                vnet_hdr: true,
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(OpenTun {
            file: open_with(name, 0)?,
            vnet_hdr: false,
        }),
        Err(e) => Err(e),
    }
}

fn open_with(name: &str, extra_flags: libc::c_int) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1-15 bytes, no '/', space or NUL)"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | extra_flags) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a properly initialised, correctly sized `ifreq` that
    // lives for the duration of the call; the fd is open and owned by `file`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETIFF as _,
            &mut req as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Registers the TUN file with the tokio reactor.
pub(crate) fn register(file: File) -> io::Result<tokio::io::unix::AsyncFd<File>> {
    // SAFETY: `File` owns its descriptor, and the `AsyncFd` owns the `File`,
    // so the descriptor stays open exactly as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(|e| e.into_parts().1)
}

const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// Whether the TUN file is still attached to its interface (`false` once the
/// interface was deleted from outside, e.g. `ip link del`).
pub(crate) fn is_attached(file: &File) -> bool {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: as in `open_tun`; TUNGETIFF writes at most an `ifreq`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNGETIFF as _,
            &mut req as *mut IfReqFlags,
        )
    };
    rc >= 0
}
