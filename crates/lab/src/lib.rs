//! Network-namespace lab that runs the whole data plane on one host.
#![deny(rust_2018_idioms)]

/// Command-line arguments of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {}

/// Errors of this component.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the component until it is stopped.
pub async fn run(_args: LabArgs) -> Result<(), LabError> {
    Err(LabError::NotImplemented)
}
