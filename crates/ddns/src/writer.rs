//! The DDNS writer loop: reads the server once, then keeps the records of
//! one name equal to the desired addresses (a watch channel fed by the
//! router's health view), paced by [`plan`](crate::plan). The decisions are
//! [`WriterState::decide`]; this is only the edge that waits and calls the
//! [`DnsUpdater`].

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Instant;

use tokio::sync::watch;

use crate::DnsUpdater;
use crate::plan::{Decision, PlanConfig, Write, WriterState};

/// What the writer reports (for `/status` and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStatus {
    /// The records as last read or written (None: unknown).
    pub known: Option<BTreeSet<Ipv4Addr>>,
    /// Writes that succeeded.
    pub writes: u64,
    /// Consecutive failed writes.
    pub failures: u32,
    /// The last error, as text (never a credential: see [`crate::DdnsError`]).
    pub last_error: Option<String>,
}

/// Keeps `name`'s A records equal to `desired` until `stop` completes. The
/// records are left as they are on stop: the next writer takes over.
pub async fn run(
    updater: &dyn DnsUpdater,
    name: &str,
    config: PlanConfig,
    mut desired: watch::Receiver<BTreeSet<Ipv4Addr>>,
    status: watch::Sender<WriterStatus>,
    stop: impl Future<Output = ()>,
) {
    let mut state = WriterState::default();
    match updater.current(name).await {
        Ok(current) => state.observed(current),
        Err(e) => tracing::warn!(%name, error = %e, "cannot read the DDNS records; writing them"),
    }
    tokio::pin!(stop);
    loop {
        let want = desired.borrow_and_update().clone();
        let wait_until = match state.decide(&config, Instant::now(), &want) {
            Decision::Write(write) => {
                let result = match &write {
                    Write::Set(addresses) => updater.set(name, addresses).await,
                    Write::Remove => updater.remove(name).await,
                };
                state.written(Instant::now(), &write, result.is_ok());
                report(
                    &status,
                    &state,
                    result.err().map(|e| e.to_string()),
                    name,
                    &write,
                );
                continue;
            }
            Decision::Idle => None,
            Decision::WaitUntil(at) => Some(tokio::time::Instant::from_std(at)),
        };
        tokio::select! {
            () = &mut stop => return,
            changed = desired.changed() => if changed.is_err() { return },
            () = sleep_until(wait_until) => {}
        }
    }
}

fn report(
    status: &watch::Sender<WriterStatus>,
    state: &WriterState,
    error: Option<String>,
    name: &str,
    write: &Write,
) {
    match &error {
        None => tracing::info!(%name, ?write, "DDNS records written"),
        Some(e) => {
            tracing::warn!(%name, error = %e, failures = state.failures, "DDNS write failed")
        }
    }
    status.send_modify(|s| {
        s.known = state.known.clone();
        s.failures = state.failures;
        if error.is_none() {
            s.writes += 1;
        }
        if error.is_some() {
            s.last_error = error;
        }
    });
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
