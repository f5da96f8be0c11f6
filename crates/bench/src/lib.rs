//! Control-plane benchmarks run by `vpn-operator bench slots`.
#![deny(rust_2018_idioms)]

/// Arguments of `vpn-operator bench slots`.
#[derive(Debug, Clone, clap::Args)]
pub struct SlotsArgs {}

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Not built yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the slot-assignment benchmark and prints its figures.
pub async fn run_slots(_args: SlotsArgs) -> Result<(), BenchError> {
    Err(BenchError::NotImplemented)
}
