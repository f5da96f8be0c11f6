//! Userspace WireGuard tunnels (boringtun), configured from gluetun's
//! custom-provider variables (gateway clients) or from explicit peer lists
//! (lab provider servers).
//!
//! ```no_run
//! # async fn demo() -> Result<(), vpno_tunnel::TunnelError> {
//! use vpno_tunnel::{Keypair, PeerConfig, Tunnel, TunnelConfig};
//! let server = Keypair::generate();
//! let client = Keypair::generate();
//! let mut config = TunnelConfig::new("wg-srv", server.private.clone());
//! config.listen_port = Some(51820);
//! config.addresses = vec!["10.64.0.1/24".parse().unwrap()];
//! let mut peer = PeerConfig::new(client.public);
//! peer.allowed_ips = vec!["10.64.0.2/32".parse().unwrap()];
//! config.peers.push(peer);
//! let tunnel = Tunnel::start(config).await?; // runs until dropped
//! println!("{:?}", tunnel.stats());
//! # Ok(()) }
//! ```
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod device;
pub mod external;
mod keys;
pub mod netns;
mod offload;
mod tun;
mod udp;

pub use config::{
    DEFAULT_CLIENT_KEEPALIVE_SECS, DEFAULT_MTU, GluetunEnvError, GluetunWireguard, PeerConfig,
    TunnelConfig, is_slot_variable, slot_env, slot_variable,
};
pub use device::{Offloads, PeerStats, Tunnel, TunnelError, TunnelStats, run_tunnel_until};
pub use keys::{KeyError, Keypair, PresharedKey, PrivateKey, PublicKey};
