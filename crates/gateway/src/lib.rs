//! The gateway agent: one per tunnel; masquerades the gateway network out of the tunnel, enforces the kill switch, reports health.
#![deny(rust_2018_idioms)]

/// Command-line arguments of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {}

/// Errors of this component.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the component until it is stopped.
pub async fn run(_args: GatewayArgs) -> Result<(), GatewayError> {
    Err(GatewayError::NotImplemented)
}
