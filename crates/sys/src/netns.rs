//! Named network namespaces (`ip netns`, bind-mounted under
//! [`NETNS_DIR`]): entering one on the calling thread, running a closure in
//! one, listing them.
//!
//! `setns(CLONE_NEWNET)` affects only the calling thread, so sockets, TUN
//! devices and `/proc/sys/net` files opened on it belong to the namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace could not be entered.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace {name:?}: {source}")]
pub struct EnterError {
    /// The namespace name.
    pub name: String,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// The file of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Enters namespace `name` on the calling thread (only this thread).
pub fn enter(name: &str) -> Result<(), EnterError> {
    let fail = |source| EnterError {
        name: name.to_owned(),
        source,
    };
    let file = File::open(path(name)).map_err(fail)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail(io::Error::from(e)))
}

/// Runs `f` on a fresh thread that has entered namespace `name`, and waits
/// for it. A panic in `f` is an error (`Other`), not a panic here.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, EnterError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let owned = name.to_owned();
    std::thread::spawn(move || enter(&owned).map(|()| f()))
        .join()
        .unwrap_or_else(|_| {
            Err(EnterError {
                name: name.to_owned(),
                source: io::Error::other("the thread in the namespace panicked"),
            })
        })
}

/// Every named namespace, sorted.
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}
