//! REST API for on-demand VPN HTTP proxies.
#![deny(rust_2018_idioms)]

/// Command-line arguments of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {}

/// Errors of this component.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the component until it is stopped.
pub async fn run(_args: ApiArgs) -> Result<(), ApiError> {
    Err(ApiError::NotImplemented)
}
