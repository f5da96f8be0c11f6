//! Small host helpers of the cluster: running a tool, finding programs,
//! the effective uid, sysctls.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestEnvError;

/// `PATH` given to every node component (containerd finds `runc` and the
/// shim there, the kubelet `iptables`, `mount`, `nsenter`).
pub(crate) const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `program args…`, returning its stdout; `Err` with stderr when it fails.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<String, TestEnvError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = || {
        let mut s = program.to_string();
        for a in &args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    let out = Command::new(program)
        .args(&args)
        .env("PATH", NODE_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestEnvError::io(format!("running {}", shown()), e))?;
    if !out.status.success() {
        return Err(TestEnvError::io(
            format!("{} failed ({})", shown(), out.status),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] for clean-up steps: a failure is only logged (tear-down
/// keeps going and reports at the end).
pub(crate) fn run_quiet<I, S>(errors: &mut Vec<String>, program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match run(program, args) {
        Ok(out) => Some(out),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    }
}

/// A program on [`NODE_PATH`].
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(NODE_PATH)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs with effective uid 0 (read from
/// `/proc/self/status`, no unsafe call needed).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `/proc/sys/…` path of a dotted sysctl name.
fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// The current value of a sysctl (`None` where it does not exist).
pub(crate) fn sysctl_get(name: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(name))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Sets a sysctl.
pub(crate) fn sysctl_set(name: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(sysctl_path(name), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name: x\n"), None);
    }

    #[test]
    fn sysctl_names_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
