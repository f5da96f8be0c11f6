//! Pure data-plane planning: address sets, routes, rules and nexthop groups as
//! data, and the diffs that turn one desired state into another; the gateway
//! network's prefix sets, per-node slices, client routes and MTU. No I/O.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod cidr;
pub mod client;
pub mod egress;
pub mod election;
pub mod health;
pub mod layout;
pub mod maglev;
pub mod mtu;
pub mod slices;
