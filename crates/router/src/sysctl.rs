//! `/proc/sys` writes, per network namespace of the calling thread, with the
//! previous values remembered so a clean shutdown can restore them.

use std::path::{Path, PathBuf};

/// A sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    /// The `/proc/sys` path.
    pub path: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// `/proc/sys/net/ipv4/conf/<interface>/<key>`.
pub fn conf(interface: &str, key: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf")
        .join(interface)
        .join(key)
}

/// `/proc/sys/net/ipv4/<key>`.
pub fn ipv4(key: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4").join(key)
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> SysctlError + '_ {
    move |source| SysctlError {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a sysctl (trimmed).
pub fn read(path: &Path) -> Result<String, SysctlError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(err(path))
}

/// Writes a sysctl.
pub fn write(path: &Path, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path, value).map_err(err(path))
}

/// Sysctls changed by the router, with their values before.
#[derive(Debug, Default)]
pub struct SysctlGuard {
    saved: Vec<(PathBuf, String)>,
}

impl SysctlGuard {
    /// Sets `path` to `value`, remembering the old value (once per path).
    pub fn set(&mut self, path: PathBuf, value: &str) -> Result<(), SysctlError> {
        let old = read(&path)?;
        if old != value {
            write(&path, value)?;
            if !self.saved.iter().any(|(p, _)| *p == path) {
                self.saved.push((path, old));
            }
        }
        Ok(())
    }

    /// Restores every changed sysctl (in reverse order); returns the failures.
    pub fn restore(&mut self) -> Vec<SysctlError> {
        self.saved
            .drain(..)
            .rev()
            .filter_map(|(p, old)| write(&p, &old).err())
            .collect()
    }
}
