//! The lab's state on disk (`/run/vpno-lab/<name>/`): the plan, the pids of
//! the processes it started, their logs. `down` works from this and from the
//! namespace names alone, so it also cleans up after a crash.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::plan::{LabName, Topology};

/// Where every lab keeps its state dir.
pub const STATE_ROOT: &str = "/run/vpno-lab";
const STATE_FILE: &str = "state.json";

/// The state dir of lab `name`.
pub fn state_dir(name: &LabName) -> PathBuf {
    Path::new(STATE_ROOT).join(name.as_str())
}

/// What a running lab is: its plan and the processes it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The plan (holds private keys: the state dir is root-only).
    pub topology: Topology,
    /// Pid of each node's main process, by node name.
    pub pids: BTreeMap<String, i32>,
    /// The `vpn-operator` binary the agents run.
    pub binary: PathBuf,
}

impl LabState {
    /// Reads the state of the lab whose state dir is `dir`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::NotRunning {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::NotRunning {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), LabError> {
        create_private_dir(dir)?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text =
            serde_json::to_string_pretty(self).map_err(|e| LabError::State(e.to_string()))?;
        std::fs::write(&tmp, text)
            .map_err(|e| LabError::State(format!("write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))
            .map_err(|e| LabError::State(format!("rename state file: {e}")))
    }
}

/// Creates a directory readable by root only.
pub fn create_private_dir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::State(format!("create {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| LabError::State(format!("chmod {}: {e}", dir.display())))
}
