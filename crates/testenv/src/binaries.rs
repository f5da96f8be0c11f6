//! Finding the control-plane binaries: `etcd` on `PATH`, and
//! `kube-apiserver` / `kube-controller-manager` from `$VPNO_K8S_BIN_DIR` or
//! unpacked (and checksum-verified) from the shared `.xz` files.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestEnvError;

/// Environment variable naming a directory that holds `kube-apiserver` and
/// `kube-controller-manager` (unpacked, executable).
pub const BIN_DIR_ENV: &str = "VPNO_K8S_BIN_DIR";

/// How to obtain the binaries when none are found (mirrors `shared/k8s/README.md`).
pub const BUILD_HINT: &str = "\
set VPNO_K8S_BIN_DIR to a directory holding kube-apiserver and kube-controller-manager v1.20.2 \
(the single-node cluster also kubelet, kube-scheduler and kube-proxy: make WHAT=\"cmd/kubelet cmd/kube-scheduler cmd/kube-proxy\"), \
or put kube-apiserver-v1.20.2-linux-amd64.xz and kube-controller-manager-v1.20.2-linux-amd64.xz in ../shared/k8s/ \
next to the checkout. To build them (~15 min on 2 cores): \
apt-get install -y golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev; \
apt-get source kubernetes (bookworm, 1.20.5+really1.20.2; enable deb-src); cd kubernetes-1.20.5+really1.20.2; \
replace vendor/github.com/modern-go/reflect2/*.go and *.s with /usr/share/gocode/src/github.com/modern-go/reflect2/*; \
mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes; \
GOPATH=$PWD/.go CGO_ENABLED=0 HOME=/tmp/h make WHAT=\"cmd/kube-apiserver cmd/kube-controller-manager\"; \
the binaries land in _output/bin/ (point VPNO_K8S_BIN_DIR there). etcd comes from Debian's etcd-server package.";

/// A Kubernetes binary shipped compressed, with the sha256 of the unpacked file.
struct Shipped {
    name: &'static str,
    xz: &'static str,
    sha256: &'static str,
}

const SHIPPED: [Shipped; 5] = [
    Shipped {
        name: "kube-apiserver",
        xz: "kube-apiserver-v1.20.2-linux-amd64.xz",
        sha256: "0ff1d771b3c7e91ce536ecae948f1b4898268bfd8373fb29b474eb4a92b3c123",
    },
    Shipped {
        name: "kube-controller-manager",
        xz: "kube-controller-manager-v1.20.2-linux-amd64.xz",
        sha256: "3e9fe9acfa54e143e6b5e9448702213477612593d53a817e43ff1dae9d624059",
    },
    Shipped {
        name: "kubelet",
        xz: "kubelet-v1.20.2-linux-amd64.xz",
        sha256: "12ef0a8f09bbe8fde36c655c9bb1b863a145627b8897bac57de4265b548e32cb",
    },
    Shipped {
        name: "kube-scheduler",
        xz: "kube-scheduler-v1.20.2-linux-amd64.xz",
        sha256: "c3e14be021ffbf7af4ee57aa6c4fadacf74f9fe6e0d03e5c8f9cf9d19c9fdc8e",
    },
    Shipped {
        name: "kube-proxy",
        xz: "kube-proxy-v1.20.2-linux-amd64.xz",
        sha256: "2caf0fc8c12c1eb67f5c5122480b42bb4c54aaea74e8e76f6bdb3b93b6dea461",
    },
];

/// The control plane's two (the first two of [`SHIPPED`]).
const CONTROL_PLANE: std::ops::Range<usize> = 0..2;
/// A node's three (kubelet, kube-scheduler, kube-proxy).
const NODE: std::ops::Range<usize> = 2..5;

/// Paths of the three binaries.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
}

/// Paths of a node's binaries (the single-node cluster's).
#[derive(Debug, Clone)]
pub(crate) struct NodeBinaries {
    pub kubelet: PathBuf,
    pub scheduler: PathBuf,
    pub proxy: PathBuf,
}

/// Locates (and if needed unpacks) the binaries.
pub(crate) fn locate() -> Result<Binaries, TestEnvError> {
    locate_with(std::env::var_os(BIN_DIR_ENV))
}

/// Locates (and if needed unpacks) kubelet, kube-scheduler and kube-proxy.
pub(crate) fn locate_node() -> Result<NodeBinaries, TestEnvError> {
    let [kubelet, scheduler, proxy] = locate_k8s(std::env::var_os(BIN_DIR_ENV), &SHIPPED[NODE])?
        .try_into()
        .expect("three node binaries");
    Ok(NodeBinaries {
        kubelet,
        scheduler,
        proxy,
    })
}

/// [`locate`] with the value of `$VPNO_K8S_BIN_DIR` passed in.
fn locate_with(bin_dir: Option<std::ffi::OsString>) -> Result<Binaries, TestEnvError> {
    let etcd = find_on_path("etcd").ok_or_else(|| {
        TestEnvError::MissingPrerequisite(
            "etcd is not on PATH (install Debian's etcd-server package)".into(),
        )
    })?;
    let [apiserver, controller_manager] = locate_k8s(bin_dir, &SHIPPED[CONTROL_PLANE])?
        .try_into()
        .expect("two control-plane binaries");
    Ok(Binaries {
        etcd,
        apiserver,
        controller_manager,
    })
}

/// The binaries `wanted` from `bin_dir`, else unpacked from the shipped `.xz` files.
fn locate_k8s(
    bin_dir: Option<std::ffi::OsString>,
    wanted: &[Shipped],
) -> Result<Vec<PathBuf>, TestEnvError> {
    if let Some(dir) = bin_dir.filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return wanted
            .iter()
            .map(|s| {
                let p = dir.join(s.name);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(TestEnvError::MissingPrerequisite(format!(
                        "{BIN_DIR_ENV}={} does not contain {}",
                        dir.display(),
                        s.name
                    )))
                }
            })
            .collect();
    }
    let names: Vec<&str> = wanted.iter().map(|s| s.name).collect();
    let source = shipped_dirs()
        .into_iter()
        .find(|d| wanted.iter().all(|s| d.join(s.xz).is_file()))
        .ok_or_else(|| {
            TestEnvError::MissingPrerequisite(format!(
                "{} not found; {BUILD_HINT}",
                names.join("/")
            ))
        })?;
    wanted.iter().map(|s| unpack_cached(&source, s)).collect()
}

/// Directories that may hold the shipped `.xz` files, in order of preference.
fn shipped_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/k8s")),
        PathBuf::from("/work/shared/k8s"),
    ]
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Unpacks `shipped` into `$TMPDIR/vpno-k8s-bin-<sha8>/` unless already
/// there. The file is moved into place only after its checksum matched, so an
/// existing file is trusted.
fn unpack_cached(source: &Path, shipped: &Shipped) -> Result<PathBuf, TestEnvError> {
    let cache = std::env::temp_dir().join(format!("vpno-k8s-bin-{}", &shipped.sha256[..12]));
    let dest = cache.join(shipped.name);
    if dest.is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(&cache)
        .map_err(|e| TestEnvError::io(format!("creating {}", cache.display()), e))?;
    static UNPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UNPACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = cache.join(format!(
        ".{}.{}-{n}.partial",
        shipped.name,
        std::process::id()
    ));
    let out = fs::File::create(&partial)
        .map_err(|e| TestEnvError::io(format!("creating {}", partial.display()), e))?;
    let xz = source.join(shipped.xz);
    let status = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .stdout(out)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| TestEnvError::io("running xz (install Debian's xz-utils)".to_string(), e))?;
    if !status.success() {
        let _ = fs::remove_file(&partial);
        return Err(TestEnvError::Unpack(format!(
            "xz -dc {} failed: {status}",
            xz.display()
        )));
    }
    let actual = sha256_file(&partial)?;
    if actual != shipped.sha256 {
        let _ = fs::remove_file(&partial);
        return Err(TestEnvError::Unpack(format!(
            "{} unpacked to sha256 {actual}, expected {}",
            xz.display(),
            shipped.sha256
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
        .map_err(|e| TestEnvError::io(format!("chmod {}", partial.display()), e))?;
    fs::rename(&partial, &dest)
        .map_err(|e| TestEnvError::io(format!("moving {} into place", dest.display()), e))?;
    Ok(dest)
}

fn sha256_file(path: &Path) -> Result<String, TestEnvError> {
    let mut file = fs::File::open(path)
        .map_err(|e| TestEnvError::io(format!("opening {}", path.display()), e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| TestEnvError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file_matches_the_standard_vector() {
        let path = std::env::temp_dir().join(format!("vpno-testenv-sha-{}", std::process::id()));
        fs::write(&path, b"abc").unwrap();
        let digest = sha256_file(&path).unwrap();
        let _ = fs::remove_file(&path);
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bin_dir_without_binaries_is_a_missing_prerequisite() {
        // Only meaningful where etcd is installed (the error names what is missing first).
        if find_on_path("etcd").is_none() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("vpno-testenv-empty-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = locate_with(Some(dir.clone().into_os_string())).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        assert!(err.is_missing_prerequisite(), "{err}");
        assert!(err.to_string().contains("kube-apiserver"), "{err}");
    }
}
