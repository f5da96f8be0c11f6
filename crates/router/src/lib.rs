//! The router agent: health-checks gateways and keeps a resilient ECMP default route over the healthy ones.
#![deny(rust_2018_idioms)]

/// Command-line arguments of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {}

/// Errors of this component.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the component until it is stopped.
pub async fn run(_args: RouterArgs) -> Result<(), RouterError> {
    Err(RouterError::NotImplemented)
}
