//! Reconcilers for the vpn.beebs.dev/v1 Mask API.
#![deny(rust_2018_idioms)]

/// Command-line arguments of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {}

/// Errors of this component.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the component until it is stopped.
pub async fn run(_args: ControllerArgs) -> Result<(), ControllerError> {
    Err(ControllerError::NotImplemented)
}
