//! OS plumbing every vpn-operator component shares, written once: the
//! shutdown signal, the duration grammar of every interval and timeout, a
//! sysctl guard that restores what it found, network-namespace entry and
//! listing, and root checks.
//!
//! Without the default `os` feature only [`duration`] and [`mac`] (pure) are built;
//! `vpno-api`, which does no I/O, uses it that way.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod duration;
pub mod mac;
#[cfg(feature = "os")]
pub mod netns;
#[cfg(feature = "os")]
pub mod root;
#[cfg(feature = "os")]
pub mod signal;
#[cfg(feature = "os")]
pub mod sysctl;

pub use duration::{parse_duration, positive_duration};
pub use mac::{format_mac, parse_mac};
#[cfg(feature = "os")]
pub use root::{is_root, require, require_root};
#[cfg(feature = "os")]
pub use signal::{shutdown_signal, terminate_signal};
#[cfg(feature = "os")]
pub use sysctl::SysctlGuard;
