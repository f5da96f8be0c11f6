//! What a cluster created on the host, recorded outside its temporary
//! directory so that the next start can clean up after a run that was killed
//! (SIGKILL runs no exit hook).
//!
//! `/run/vpno-testenv-cluster/lock` is held (flock) while a cluster runs:
//! a second test binary waits for the first, and a `state.json` found by
//! whoever holds the lock belongs to a dead run.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TestEnvError;

/// Where the lock and the state file live (tmpfs: gone after a reboot, as
/// is everything it describes).
pub(crate) const STATE_DIR: &str = "/run/vpno-testenv-cluster";

/// A process a cluster started: pid plus start time name it uniquely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordedProcess {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
}

/// Everything tear-down needs to undo a cluster's changes to the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// The test process that ran the cluster.
    pub owner_pid: u32,
    /// The cluster's directory (containerd root/state, kubelet root, logs).
    pub dir: PathBuf,
    /// Processes started, oldest first.
    pub processes: Vec<RecordedProcess>,
    /// Sysctls as they were before start (name, value), restored at the end.
    pub sysctls: Vec<(String, String)>,
    /// Host paths that did not exist before start; removed at the end.
    pub absent_paths: Vec<PathBuf>,
    /// iptables-nft tables (`ip filter`, …) that existed before start; the
    /// others are removed at the end when empty.
    #[serde(default)]
    pub nft_tables_before: Vec<String>,
}

impl State {
    fn path() -> PathBuf {
        Path::new(STATE_DIR).join("state.json")
    }

    /// The state file of an earlier run, if there is one (an unreadable
    /// file yields a state with only defaults: clean-up of the fixed names
    /// still runs).
    pub(crate) fn load() -> Option<State> {
        let text = fs::read_to_string(Self::path()).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_default())
    }

    /// Writes the state file (atomically: a temp file renamed into place).
    pub(crate) fn save(&self) -> Result<(), TestEnvError> {
        let path = Self::path();
        let tmp = path.with_extension("json.partial");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| TestEnvError::io(format!("writing {}", path.display()), e))
    }

    /// Removes the state file (tear-down finished).
    pub(crate) fn remove() {
        let _ = fs::remove_file(Self::path());
    }
}

/// Takes the machine-wide cluster lock, waiting while another process holds
/// it. The lock lasts as long as the returned file is open (so also ends
/// when the process dies).
pub(crate) fn lock() -> Result<File, TestEnvError> {
    fs::create_dir_all(STATE_DIR)
        .map_err(|e| TestEnvError::io(format!("creating {STATE_DIR}"), e))?;
    let path = Path::new(STATE_DIR).join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TestEnvError::io(format!("opening {}", path.display()), e))?;
    if file.try_lock().is_err() {
        tracing::warn!("another test process runs the single-node cluster; waiting for it");
        file.lock()
            .map_err(|e| TestEnvError::io(format!("locking {}", path.display()), e))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let state = State {
            owner_pid: 42,
            dir: "/tmp/vpno-cluster-42".into(),
            processes: vec![RecordedProcess {
                name: "kubelet".into(),
                pid: 7,
                start_time: 99,
            }],
            sysctls: vec![("net.ipv4.ip_forward".into(), "0".into())],
            absent_paths: vec!["/var/lib/kubelet".into()],
            nft_tables_before: vec!["ip filter".into()],
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), state);
    }
}
