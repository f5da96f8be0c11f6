//! The kubeconfig the CNI plugin reads pods with: made from the agent's own
//! service account (token, CA, the in-cluster API address), written beside
//! the CNI config, readable by root only, rewritten when the token rotates.
//! JSON is YAML, so kube's kubeconfig reader takes it as it is.

use std::path::{Path, PathBuf};

use serde_json::json;

/// Where Kubernetes mounts a Pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The parts of a kubeconfig.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `https://host:port`.
    pub server: String,
    /// The API server's CA (PEM).
    pub ca_pem: String,
    /// The bearer token.
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log.
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Why the service account cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Not in a Pod (no service account or API address).
    #[error("not running in a Pod: {0} (give --cni-kubeconfig instead)")]
    NotInCluster(String),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The kubeconfig text for `creds`.
pub fn render(creds: &Credentials) -> String {
    use base64::Engine as _;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": creds.server,
            "certificate-authority-data": encode(creds.ca_pem.as_bytes()),
        }}],
        "users": [{"name": "vpno-cni", "user": {"token": creds.token}}],
        "contexts": [{"name": "vpno-cni", "context": {"cluster": "local", "user": "vpno-cni"}}],
        "current-context": "vpno-cni",
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("JSON serialises");
    text.push('\n');
    text
}

/// The agent's own service account, as mounted in its Pod.
pub fn in_cluster() -> Result<Credentials, KubeconfigError> {
    let env = |k: &str| {
        std::env::var(k).map_err(|_| KubeconfigError::NotInCluster(format!("{k} is not set")))
    };
    let host = env("KUBERNETES_SERVICE_HOST")?;
    let port = env("KUBERNETES_SERVICE_PORT")?;
    let read = |file: &str| {
        let path = Path::new(SERVICE_ACCOUNT_DIR).join(file);
        std::fs::read_to_string(&path).map_err(|source| KubeconfigError::Io {
            what: "reading",
            path,
            source,
        })
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(Credentials {
        server: format!("https://{host}:{port}"),
        ca_pem: read("ca.crt")?,
        token: read("token")?.trim().to_string(),
    })
}

/// Writes `text` to `path` (mode 0600, atomically) unless it already holds
/// it; returns whether it changed.
pub fn write(path: &Path, text: &str) -> Result<bool, KubeconfigError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| KubeconfigError::Io {
            what,
            path: p,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let tmp = path.with_extension("vpno-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_is_private_atomic_and_only_on_change() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vpno-kubeconfig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("vpno-cni.d/kubeconfig");
        assert!(write(&path, "one").unwrap(), "created with its directory");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!write(&path, "one").unwrap(), "unchanged: not rewritten");
        assert!(write(&path, "two").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["kubeconfig"], "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kubeconfig_names_server_ca_and_token_and_debug_hides_the_token() {
        let creds = Credentials {
            server: "https://10.96.0.1:443".into(),
            ca_pem: "PEM".into(),
            token: "s3cret".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&render(&creds)).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.96.0.1:443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(v["users"][0]["user"]["token"], "s3cret");
        assert_eq!(v["current-context"], "vpno-cni");
        assert!(!format!("{creds:?}").contains("s3cret"));
    }
}
