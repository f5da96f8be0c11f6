//! Userspace WireGuard tunnels (boringtun), configured from gluetun's
//! custom-provider variables or from explicit peer lists (lab servers).
#![deny(rust_2018_idioms)]
