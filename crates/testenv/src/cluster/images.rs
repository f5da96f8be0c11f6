//! The images every cluster has: built by `scripts/image` (no registry) and
//! imported into containerd before the kubelet starts.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::containerd::Ctr;
use super::host::NODE_PATH;
use crate::TestEnvError;

/// `localhost/busybox:1.35`: Debian's busybox-static with its applets.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:1.35";
/// `localhost/vpno-testbox:dev`: busybox plus `ip-echo` (an HTTP server
/// answering `/cgi-bin/ip` with the caller's IP) and a plain-HTTP `curl`.
pub const TESTBOX_IMAGE: &str = "localhost/vpno-testbox:dev";

/// `scripts/image` of this checkout.
pub fn image_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/image")
}

/// Runs `scripts/image --out OUT ARGS…` and returns the tarball of each
/// named image (`OUT/<image>.tar`).
pub(crate) fn build(out: &Path, images: &[&str]) -> Result<Vec<PathBuf>, TestEnvError> {
    let script = image_script();
    let output = Command::new(&script)
        .arg("--out")
        .arg(out)
        .args(images)
        .env("PATH", NODE_PATH)
        .output()
        .map_err(|e| TestEnvError::io(format!("running {}", script.display()), e))?;
    if !output.status.success() {
        return Err(TestEnvError::io(
            format!("{} {} failed", script.display(), images.join(" ")),
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_string()),
        ));
    }
    Ok(images
        .iter()
        .map(|i| out.join(format!("{i}.tar")))
        .collect())
}

/// Builds and imports the sandbox image, busybox and the testbox.
pub(crate) fn build_and_import(dir: &Path, ctr: &Ctr) -> Result<(), TestEnvError> {
    for tar in build(&dir.join("images"), &["pause", "busybox", "testbox"])? {
        ctr.import(&tar)?;
    }
    Ok(())
}
