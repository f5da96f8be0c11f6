//! Network-namespace helpers for tests and the lab: create/delete named
//! namespaces (`ip netns`), and run async code inside one on a dedicated
//! thread.
//!
//! A thread that calls `setns(CLONE_NEWNET)` affects only itself, so every
//! socket or TUN device created on it belongs to the namespace; a
//! current-thread tokio runtime on that thread keeps all spawned tasks there.

use std::future::Future;
use std::io;
use std::process::Command;
use std::thread::JoinHandle;

/// Errors of the namespace helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {message}")]
    Command {
        /// The arguments.
        args: String,
        /// stderr or spawn error.
        message: String,
    },
    /// Entering the namespace failed.
    #[error("cannot enter network namespace {name:?}: {source}")]
    Enter {
        /// The namespace name.
        name: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The namespace thread ended before handing back its runtime.
    #[error("namespace thread for {0:?} died during start-up")]
    ThreadDied(String),
}

/// Runs `ip ARGS...` (optionally `-n NETNS`) and returns stdout.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, NetnsError> {
    let mut full: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let output = Command::new("ip")
        .args(&full)
        .output()
        .map_err(|e| NetnsError::Command {
            args: full.join(" "),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(NetnsError::Command {
            args: full.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside a namespace (`ip netns exec NS CMD...`) and returns
/// its output, whatever its exit status.
pub fn exec(netns: &str, program: &str, args: &[&str]) -> io::Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .output()
}

/// A named network namespace (`/run/netns/NAME`) deleted on drop, with
/// every link, socket and process left inside it.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Creates the namespace (replacing a leftover of the same name) with its
    /// loopback up.
    pub fn create(name: impl Into<String>) -> Result<Self, NetnsError> {
        let name = name.into();
        let _ = ip(None, &["netns", "del", &name]);
        ip(None, &["netns", "add", &name])?;
        let ns = NamedNetns { name };
        ip(Some(&ns.name), &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        ip(Some(&self.name), args)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<std::process::Output> {
        exec(&self.name, program, args)
    }

    /// Joins this namespace to `peer` with a veth pair: `local` (address
    /// `local_cidr`) here and `remote` (address `remote_cidr`) in `peer`, both up.
    pub fn link_veth(
        &self,
        (local, local_cidr): (&str, &str),
        peer: &NamedNetns,
        (remote, remote_cidr): (&str, &str),
    ) -> Result<(), NetnsError> {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            peer.name(),
        ])?;
        self.ip(&["addr", "add", local_cidr, "dev", local])?;
        self.ip(&["link", "set", local, "up"])?;
        peer.ip(&["addr", "add", remote_cidr, "dev", remote])?;
        peer.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    /// Starts a thread inside this namespace running a tokio runtime.
    pub fn runtime(&self) -> Result<NetnsRuntime, NetnsError> {
        NetnsRuntime::start(&self.name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(None, &["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete network namespace");
        }
    }
}

/// Enters the named namespace on the calling thread (only this thread).
pub fn enter(name: &str) -> Result<(), NetnsError> {
    vpno_sys::netns::enter(name).map_err(|e| NetnsError::Enter {
        name: e.name,
        source: e.source,
    })
}

/// A dedicated OS thread inside a network namespace, running a
/// current-thread tokio runtime. Futures spawned on it (and the sockets they
/// create) live in that namespace. Dropping it stops the runtime, cancelling
/// every task still running there.
pub struct NetnsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NetnsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsRuntime").finish_non_exhaustive()
    }
}

impl NetnsRuntime {
    /// Starts the thread and enters namespace `name` (a `/run/netns` name).
    pub fn start(name: &str) -> Result<Self, NetnsError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn(move || {
                let runtime = enter(&ns).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| NetnsError::Enter {
                            name: ns.clone(),
                            source,
                        })
                });
                match runtime {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                        // Dropping the runtime cancels the remaining tasks
                        // (and so drops their tunnels and sockets) here,
                        // still inside the namespace.
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| NetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| NetnsError::ThreadDied(name.to_string()))??;
        Ok(NetnsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime handle (spawn on it to run inside the namespace).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Spawns a future inside the namespace.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Runs a future inside the namespace and waits for its result from an
    /// async context elsewhere.
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(future).await {
            Ok(output) => output,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("namespace task cancelled: {e}"),
        }
    }
}

impl Drop for NetnsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub use vpno_sys::is_root as have_root;
pub use vpno_sys::require_root;
