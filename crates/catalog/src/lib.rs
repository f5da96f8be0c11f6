//! gluetun's VPN server catalog: loads both on-disk layouts and answers filtered queries.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
