//! `/proc/sys` settings, per network namespace of the calling thread, and
//! [`SysctlGuard`], which remembers what it found and puts it back.

use std::io;
use std::path::{Path, PathBuf};

/// A sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    /// The `/proc/sys` path.
    pub path: String,
    /// The I/O error.
    #[source]
    pub source: io::Error,
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

/// `/proc/sys/<dotted key with dots as slashes>`, e.g. `net.ipv4.ip_forward`.
pub fn dotted(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Where sysctls are read and written: `/proc/sys` ([`ProcSys`]), or a map
/// in unit tests.
pub trait SysctlFiles {
    /// The current value, trimmed.
    fn read(&mut self, path: &Path) -> io::Result<String>;
    /// Sets the value.
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real `/proc/sys` of the calling thread's namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSys;

impl SysctlFiles for ProcSys {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path).map(|s| s.trim().to_owned())
    }
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }
}

fn error(path: &Path) -> impl FnOnce(io::Error) -> SysctlError + '_ {
    move |source| SysctlError {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a sysctl (trimmed).
pub fn read(path: &Path) -> Result<String, SysctlError> {
    ProcSys.read(path).map_err(error(path))
}

/// Writes a sysctl, without remembering the old value. A value already in
/// place is not written again: in an unprivileged Pod `/proc/sys` is
/// read-only, and what the agents need there (e.g. forwarding, which the
/// CNI plugin switches on) may already be set.
pub fn write(path: &Path, value: &str) -> Result<(), SysctlError> {
    if ProcSys.read(path).is_ok_and(|v| v == value.trim()) {
        return Ok(());
    }
    ProcSys.write(path, value).map_err(error(path))
}

/// Sysctls a component changed, with the values it found. [`restore`]
/// (or dropping the guard) puts them back, last changed first.
///
/// [`restore`]: SysctlGuard::restore
#[derive(Debug, Default)]
pub struct SysctlGuard<F: SysctlFiles = ProcSys> {
    files: F,
    saved: Vec<(PathBuf, String)>,
}

impl SysctlGuard<ProcSys> {
    /// A guard over the real `/proc/sys`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<F: SysctlFiles> SysctlGuard<F> {
    /// A guard over `files`.
    pub fn with_files(files: F) -> Self {
        SysctlGuard {
            files,
            saved: Vec::new(),
        }
    }

    /// Sets `path` to `value`, remembering the value found the first time
    /// this path is set. Writes nothing when it already has that value.
    pub fn set(&mut self, path: impl Into<PathBuf>, value: &str) -> Result<(), SysctlError> {
        let path = path.into();
        let old = self.files.read(&path).map_err(error(&path))?;
        if old == value {
            return Ok(());
        }
        self.files.write(&path, value).map_err(error(&path))?;
        if !self.saved.iter().any(|(p, _)| *p == path) {
            self.saved.push((path, old));
        }
        Ok(())
    }

    /// Restores every changed sysctl, last changed first, carrying on past
    /// failures; returns them.
    pub fn restore(&mut self) -> Vec<SysctlError> {
        let saved = std::mem::take(&mut self.saved);
        saved
            .into_iter()
            .rev()
            .filter_map(|(path, old)| self.files.write(&path, &old).map_err(error(&path)).err())
            .collect()
    }

    /// The sysctls changed and not yet restored, with their old values.
    pub fn changed(&self) -> &[(PathBuf, String)] {
        &self.saved
    }
}

impl<F: SysctlFiles> Drop for SysctlGuard<F> {
    fn drop(&mut self) {
        for e in self.restore() {
            tracing::warn!(error = %e, "could not restore a sysctl");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    /// In-memory sysctls, shared with the test so it can look after drop;
    /// paths under `/ro` refuse writes.
    #[derive(Clone, Default)]
    struct Fake(Rc<RefCell<BTreeMap<PathBuf, String>>>, Rc<RefCell<usize>>);

    impl SysctlFiles for Fake {
        fn read(&mut self, path: &Path) -> io::Result<String> {
            self.0
                .borrow()
                .get(path)
                .cloned()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
            if path.starts_with("/ro") {
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            *self.1.borrow_mut() += 1;
            self.0
                .borrow_mut()
                .insert(path.to_owned(), value.to_owned());
            Ok(())
        }
    }

    fn fake(values: &[(&str, &str)]) -> Fake {
        let f = Fake::default();
        for (p, v) in values {
            f.0.borrow_mut().insert(PathBuf::from(p), (*v).to_owned());
        }
        f
    }

    fn value(f: &Fake, p: &str) -> String {
        f.0.borrow()[Path::new(p)].clone()
    }

    #[test]
    fn drop_restores_what_it_found_once_per_path() {
        let f = fake(&[("/a", "0"), ("/b", "1")]);
        {
            let mut guard = SysctlGuard::with_files(f.clone());
            guard.set("/a", "1").unwrap();
            guard.set("/a", "2").unwrap();
            guard.set("/b", "1").unwrap(); // already so: nothing to restore
            assert_eq!(value(&f, "/a"), "2");
            assert_eq!(guard.changed(), [(PathBuf::from("/a"), "0".to_owned())]);
        }
        assert_eq!((value(&f, "/a"), value(&f, "/b")), ("0".into(), "1".into()));
        assert_eq!(
            *f.1.borrow(),
            3,
            "two sets and one restore; /b never written"
        );
    }

    #[test]
    fn restore_goes_on_past_failures_and_reports_them() {
        let f = fake(&[("/a", "0"), ("/c", "0")]);
        let mut guard = SysctlGuard::with_files(f.clone());
        guard.set("/a", "1").unwrap();
        guard.set("/c", "1").unwrap();
        // A missing sysctl is an error, and changes nothing.
        assert!(guard.set("/missing", "1").is_err());
        // The old value of /a can no longer be written back: simulate by
        // moving it under /ro in the saved list.
        guard.saved[0].0 = PathBuf::from("/ro/a");
        let errors = guard.restore();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("/ro/a"), "{}", errors[0]);
        assert_eq!(value(&f, "/c"), "0", "restored despite the earlier failure");
        assert!(guard.changed().is_empty());
    }

    #[test]
    fn dotted_keys() {
        assert_eq!(
            dotted("net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            conf("eth0", "arp_ignore"),
            Path::new("/proc/sys/net/ipv4/conf/eth0/arp_ignore")
        );
    }
}
