//! The `vpn.beebs.dev/v1` API: `MaskProvider`, `Mask`, `MaskConsumer` and
//! `MaskReservation`, wire-compatible with existing users of the API, and
//! `MaskGateway`, the VPN network for pods built on them.
//!
//! This crate holds types and pure helpers only (naming rules, duration
//! parsing, CRD rendering); it performs no I/O.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod crd;
pub mod duration;
pub mod gateway;
pub mod mask;
pub mod names;
pub mod provider;
pub mod reservation;

pub use gateway::{
    ClientsSpec, Condition, GatewayPhase, GatewayStatus, HealthCheckSpec, LabelSelector,
    LabelSelectorRequirement, MaskGateway, MaskGatewaySpec, MaskGatewayStatus, NetworkSpec,
    NetworkStatus, NodeSlice, RouterRole, RouterStatus, SelectorOperator, TunnelSpec, TunnelType,
};
pub use mask::{
    AssignedProvider, Mask, MaskConsumer, MaskConsumerSpec, MaskConsumerStatus, MaskPhase,
    MaskSpec, MaskStatus,
};
pub use provider::{
    ContainerOverrides, MaskProvider, MaskProviderSpec, MaskProviderStatus, ProviderPhase,
    VerifyFailure, VerifyOverrides, VerifySpec,
};
pub use reservation::{
    MaskReservation, MaskReservationSpec, MaskReservationStatus, ReservationPhase,
};

/// The API group every kind of this crate belongs to.
pub const GROUP: &str = "vpn.beebs.dev";
/// The only served version.
pub const VERSION: &str = "v1";
