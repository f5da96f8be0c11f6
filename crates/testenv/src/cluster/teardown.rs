//! Undoing what a cluster did to the host, from its [`State`] alone — so
//! the same steps serve a normal tear-down and the clean-up after a run that
//! was killed. Every step keeps going after a failure; errors are collected
//! and reported at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::containerd::Layout;
use super::host;
use super::network;
use super::state::State;
use crate::process;

/// Host paths the kubelet, containerd and the CNI plugins may create even
/// with every directory option pointed at the cluster's own directory.
/// Removed at the end only if they did not exist before start.
pub(crate) const HOST_PATHS: &[&str] = &[
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/dockershim",
    "/run/containerd",
    "/usr/libexec/kubernetes",
];

/// The cgroup the kubelet puts pods in (cgroupfs driver).
const KUBEPODS: &str = "kubepods";

/// The host paths of [`HOST_PATHS`] that do not exist now.
pub(crate) fn absent_host_paths() -> Vec<PathBuf> {
    HOST_PATHS
        .iter()
        .map(PathBuf::from)
        .filter(|p| fs::symlink_metadata(p).is_err())
        .collect()
}

/// Everything after the processes this test process owns are stopped:
/// recorded processes still alive (a dead run's), container processes and
/// shims, mounts, iptables chains, conntrack entries, links, sysctls, host
/// paths, and finally the directory. Returns the errors met.
pub(crate) fn clean_host(state: &State) -> Vec<String> {
    let mut errors = Vec::new();
    for p in state.processes.iter().rev() {
        process::stop_recorded(p.pid, p.start_time, Duration::from_secs(3));
    }
    if !state.dir.as_os_str().is_empty() {
        kill_shims(&state.dir);
    }
    kill_and_remove_cgroups(&mut errors);
    if !state.dir.as_os_str().is_empty() {
        unmount_under(&state.dir, &mut errors);
    }
    network::remove_chains(&mut errors);
    network::remove_new_empty_tables(&state.nft_tables_before, &mut errors);
    network::flush_conntrack();
    network::remove_links(&mut errors);
    for (name, value) in &state.sysctls {
        if host::sysctl_get(name).as_deref() != Some(value.as_str())
            && let Err(e) = host::sysctl_set(name, value)
        {
            errors.push(format!("restoring sysctl {name}={value}: {e}"));
        }
    }
    for path in &state.absent_paths {
        if HOST_PATHS.iter().any(|p| Path::new(p) == path) {
            let _ = fs::remove_dir_all(path);
        }
    }
    if !state.dir.as_os_str().is_empty() {
        remove_dir(&state.dir, &mut errors);
    }
    errors
}

/// Removes the cluster directory unless something is still mounted below
/// it (then removing would reach into the mounted file system).
fn remove_dir(dir: &Path, errors: &mut Vec<String>) {
    let left = mounts_under(&read_mountinfo(), dir);
    if !left.is_empty() {
        errors.push(format!(
            "not removing {}: still mounted below it: {}",
            dir.display(),
            left.join(", ")
        ));
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
}

/// containerd's shims outlive containerd (they are re-parented to init)
/// and record their pid nowhere; each names the socket of the containerd
/// that started it, which is a path inside the cluster's recorded
/// directory. Kills exactly those (found by that path, never by name alone).
fn kill_shims(dir: &Path) {
    let socket = Layout::under(dir).socket;
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if is_shim_of(&cmdline, &socket) {
            process::send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Whether a `/proc/<pid>/cmdline` is a containerd shim started for the
/// containerd on `socket` (`containerd-shim-runc-v2 … -address SOCKET`).
fn is_shim_of(cmdline: &[u8], socket: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let socket = socket.as_os_str().as_encoded_bytes();
    args.first()
        .is_some_and(|a0| a0.ends_with(b"containerd-shim-runc-v2"))
        && args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == socket)
}

/// Every `kubepods` cgroup directory, deepest first, over all hierarchies.
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for h in hierarchies.flatten() {
        let top = h.path().join(KUBEPODS);
        if top.is_dir() {
            collect_dirs(&top, &mut found);
        }
    }
    // Children were pushed after their parents: reverse for deepest first.
    found.reverse();
    found
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// SIGKILLs every process left in the pod cgroups (containers of a dead
/// run), then removes the cgroups.
fn kill_and_remove_cgroups(errors: &mut Vec<String>) {
    let cgroups = kubepods_cgroups();
    if cgroups.is_empty() {
        return;
    }
    for _ in 0..50 {
        let mut alive = 0;
        for cg in &cgroups {
            let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                alive += 1;
                process::send_signal(pid, libc::SIGKILL);
            }
        }
        if alive == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for cg in &cgroups {
        if let Err(e) = fs::remove_dir(cg)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("removing cgroup {}: {e}", cg.display()));
        }
    }
}

fn read_mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Mount points at or below `dir` from a mountinfo listing, newest first
/// (the order they must be unmounted in).
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.reverse();
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir` (lazily: a busy mount is detached
/// now and freed when its last user goes; a netns mount frees the namespace).
fn unmount_under(dir: &Path, errors: &mut Vec<String>) {
    // Shared propagation can make one unmount reveal or remove others:
    // repeat until nothing is left (bounded).
    for _ in 0..5 {
        let points = mounts_under(&read_mountinfo(), dir);
        if points.is_empty() {
            return;
        }
        for p in points {
            let _ = host::run("umount", ["-l", p.as_str()]);
        }
    }
    let left = mounts_under(&read_mountinfo(), dir);
    if !left.is_empty() {
        errors.push(format!("could not unmount: {}", left.join(", ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_dir_newest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:40 / /tmp/c/kubelet rw shared:5 - ext4 /dev/vda rw
31 30 0:41 / /tmp/c/kubelet/pods/x/volumes/token rw - tmpfs tmpfs rw
32 22 0:42 / /tmp/c2 rw - tmpfs tmpfs rw
33 22 0:4 net:[4026532] /tmp/c/containerd/state/netns/cni-1 rw - nsfs nsfs rw
34 22 0:43 / /tmp/c/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_under(info, Path::new("/tmp/c")),
            [
                "/tmp/c/with space",
                "/tmp/c/containerd/state/netns/cni-1",
                "/tmp/c/kubelet/pods/x/volumes/token",
                "/tmp/c/kubelet",
            ]
        );
    }

    #[test]
    fn shims_are_recognised_by_the_socket_they_name() {
        let socket = Path::new("/tmp/c/containerd.sock");
        let ours = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0k8s.io\0-id\0ab\0-address\0/tmp/c/containerd.sock\0";
        let other = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0k8s.io\0-address\0/run/containerd/containerd.sock\0";
        let not_a_shim = b"/bin/sh\0-c\0-address\0/tmp/c/containerd.sock\0";
        assert!(is_shim_of(ours, socket));
        assert!(!is_shim_of(other, socket));
        assert!(!is_shim_of(not_a_shim, socket));
    }

    #[test]
    fn only_listed_host_paths_are_ever_removed() {
        for p in absent_host_paths() {
            assert!(HOST_PATHS.iter().any(|h| Path::new(h) == p));
        }
    }
}
