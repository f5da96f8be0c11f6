//! containerd with its own config, root, state and socket under the
//! cluster's directory, and the `ctr` calls the harness makes (image import,
//! killing leftover containers).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::host;
use crate::TestEnvError;

/// containerd's namespace for CRI (kubelet) containers and images.
pub(crate) const K8S_NAMESPACE: &str = "k8s.io";
/// The sandbox ("pause") image; built by `scripts/image` and imported before
/// the kubelet starts.
pub(crate) const SANDBOX_IMAGE: &str = "localhost/pause:3.4";
/// Registries whose pulls are pointed at a closed loopback port, so that an
/// image missing locally fails at once, without a DNS lookup or a packet
/// leaving the machine.
const BLOCKED_REGISTRIES: [&str; 4] = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"];
/// Nothing listens on the discard port.
const CLOSED_ENDPOINT: &str = "http://127.0.0.1:9";

/// Paths of one containerd instance.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub config: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub runc_root: PathBuf,
    pub cni_bin: PathBuf,
    pub cni_conf: PathBuf,
}

impl Layout {
    /// The layout under a cluster directory.
    pub(crate) fn under(dir: &Path) -> Layout {
        let c = dir.join("containerd");
        Layout {
            config: c.join("config.toml"),
            root: c.join("root"),
            state: c.join("state"),
            socket: dir.join("containerd.sock"),
            runc_root: c.join("runc"),
            cni_bin: dir.join("cni/bin"),
            cni_conf: dir.join("cni/net.d"),
        }
    }
}

/// containerd's `config.toml` (version 2) for `layout`.
pub(crate) fn config(layout: &Layout) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let mut mirrors = String::new();
    for registry in BLOCKED_REGISTRIES {
        mirrors.push_str(&format!(
            "[{cri}.registry.mirrors.\"{registry}\"]\n  endpoint = [\"{CLOSED_ENDPOINT}\"]\n"
        ));
    }
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  # CAP_SYS_RESOURCE is missing from the bounding set on these machines: without
  # this every sandbox fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  # pod network namespaces under our state dir, not in the shared /run/netns
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc_root}"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"

{mirrors}"#,
        root = layout.root.display(),
        state = layout.state.display(),
        socket = layout.socket.display(),
        runc_root = layout.runc_root.display(),
        cni_bin = layout.cni_bin.display(),
        cni_conf = layout.cni_conf.display(),
    )
}

/// Fills the CNI bin dir with links to Debian's plugins (`/usr/lib/cni`).
pub(crate) fn link_cni_plugins(layout: &Layout) -> Result<(), TestEnvError> {
    let source = Path::new(super::CNI_PLUGIN_DIR);
    let entries = std::fs::read_dir(source)
        .map_err(|e| TestEnvError::io(format!("reading {}", source.display()), e))?;
    for entry in entries.flatten() {
        let link = layout.cni_bin.join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), &link)
            .map_err(|e| TestEnvError::io(format!("linking {}", link.display()), e))?;
    }
    Ok(())
}

/// `ctr` against one containerd's socket, in the CRI namespace.
#[derive(Debug, Clone)]
pub(crate) struct Ctr {
    socket: PathBuf,
}

impl Ctr {
    pub(crate) fn new(socket: &Path) -> Ctr {
        Ctr {
            socket: socket.to_path_buf(),
        }
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let mut v: Vec<&std::ffi::OsStr> = vec![
            "--address".as_ref(),
            self.socket.as_os_str(),
            "-n".as_ref(),
            K8S_NAMESPACE.as_ref(),
        ];
        v.extend(rest.iter().map(|s| std::ffi::OsStr::new(*s)));
        v
    }

    /// Runs `ctr … rest`.
    pub(crate) fn run(&self, rest: &[&str]) -> Result<String, TestEnvError> {
        host::run("ctr", self.args(rest))
    }

    /// Waits until containerd answers on its socket.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<(), TestEnvError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.run(&["version"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(TestEnvError::Timeout {
                        what: format!("containerd on {} ({e})", self.socket.display()),
                        after: timeout,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Imports a docker-archive or OCI tarball (unpacked for the overlayfs
    /// snapshotter, so the kubelet can run it at once).
    pub(crate) fn import(&self, tar: &Path) -> Result<(), TestEnvError> {
        let tar = tar.to_string_lossy();
        self.run(&["images", "import", &tar]).map(|_| ())
    }

    /// Kills and deletes every task and container in the CRI namespace (the
    /// kubelet is stopped by then). Failures are collected, not fatal.
    pub(crate) fn remove_everything(&self, errors: &mut Vec<String>) {
        let tasks = self.run(&["tasks", "ls", "-q"]).unwrap_or_default();
        for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.run(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        // containerd's CRI plugin deletes a task itself once it exits, so
        // "not found" here means "already gone".
        let mut keep = |result: Result<String, TestEnvError>| {
            if let Err(e) = result {
                let text = e.to_string();
                if !text.contains("not found") {
                    errors.push(text);
                }
            }
        };
        for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
            keep(self.run(&["tasks", "delete", "-f", id]));
        }
        let containers = self.run(&["containers", "ls", "-q"]).unwrap_or_default();
        for id in containers.lines().map(str::trim).filter(|l| !l.is_empty()) {
            keep(self.run(&["containers", "rm", id]));
        }
    }

    /// How many tasks (running containers, sandboxes included) there are.
    pub(crate) fn task_count(&self) -> Option<usize> {
        let out = self.run(&["tasks", "ls", "-q"]).ok()?;
        Some(out.lines().filter(|l| !l.trim().is_empty()).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_dir_and_blocks_registries() {
        let layout = Layout::under(Path::new("/t/c"));
        let text = config(&layout);
        assert!(text.contains(r#"root = "/t/c/containerd/root""#), "{text}");
        assert!(text.contains(r#"address = "/t/c/containerd.sock""#));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("netns_mounts_under_state_dir = true"));
        assert!(text.contains(r#"Root = "/t/c/containerd/runc""#));
        for registry in BLOCKED_REGISTRIES {
            assert!(
                text.contains(&format!("mirrors.\"{registry}\"]")),
                "{registry}"
            );
        }
        assert_eq!(
            text.matches(CLOSED_ENDPOINT).count(),
            BLOCKED_REGISTRIES.len()
        );
    }
}
