//! Our entry in the node's chained CNI config list, and the plugin binary in
//! the CNI bin directory. The edits are pure ([`insert`], [`remove`]) over
//! the parsed list; [`CniInstall`] does the file work: it picks the file the
//! runtime uses (the first config in name order, as libcni and containerd
//! do), replaces it atomically (write a temporary file beside it, rename)
//! and writes nothing when nothing changes or the file cannot be read.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The plugin's `type`: the name the runtime execs from the bin directory.
pub const PLUGIN_TYPE: &str = "vpno-cni";

/// Why the config list cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    /// A file could not be read, written or renamed.
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
    /// No CNI config in the directory (the cluster's plugin is not installed yet).
    #[error(
        "no CNI config (*.conflist, *.conf, *.json) in {0}; the cluster's network plugin has not written one yet"
    )]
    NoConfig(PathBuf),
    /// The file is not a JSON config list.
    #[error("{path} is not a CNI config list: {why}; left unchanged")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// `list` with our entry (`entry`, whose `type` is [`PLUGIN_TYPE`]) as its last
/// plugin, replacing any previous entry of ours; every other plugin and key
/// is kept as it was. `Err` names what makes `list` not a config list.
pub fn insert(list: &Value, entry: &Value) -> Result<Value, String> {
    let mut out = remove(list)?;
    plugins_mut(&mut out)?.push(entry.clone());
    Ok(out)
}

/// `list` with `entries` (each of type [`PLUGIN_TYPE`], one per gateway
/// network) as its last plugins, in the given order, replacing all of ours;
/// no entries removes ours. Every other plugin and key is kept.
pub fn set_entries(list: &Value, entries: &[Value]) -> Result<Value, String> {
    let mut out = remove(list)?;
    plugins_mut(&mut out)?.extend(entries.iter().cloned());
    Ok(out)
}

/// `list` without our entry (every plugin of type [`PLUGIN_TYPE`]).
pub fn remove(list: &Value) -> Result<Value, String> {
    let mut out = list.clone();
    plugins_mut(&mut out)?.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    Ok(out)
}

fn plugins_mut(list: &mut Value) -> Result<&mut Vec<Value>, String> {
    let obj = list.as_object_mut().ok_or("not a JSON object")?;
    let plugins = obj
        .get_mut("plugins")
        .ok_or("no \"plugins\" array (a single-plugin .conf cannot be chained)")?
        .as_array_mut()
        .ok_or("\"plugins\" is not an array")?;
    if let Some(bad) = plugins
        .iter()
        .position(|p| p.get("type").and_then(Value::as_str).is_none())
    {
        return Err(format!("plugin {bad} has no \"type\""));
    }
    Ok(plugins)
}

/// Where the plugin goes on the node.
#[derive(Debug, Clone)]
pub struct CniInstall {
    /// The CNI config directory (e.g. `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The CNI bin directory (e.g. `/opt/cni/bin`).
    pub bin_dir: PathBuf,
}

impl CniInstall {
    /// The config file the runtime uses: the first `*.conflist`, `*.conf`
    /// or `*.json` in name order.
    pub fn config_file(&self) -> Result<PathBuf, ConflistError> {
        let io = |source| ConflistError::Io {
            what: "listing",
            path: self.conf_dir.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .next()
            .ok_or_else(|| ConflistError::NoConfig(self.conf_dir.clone()))
    }

    /// Makes `entry` our plugin entry in the config list; returns whether
    /// the file changed.
    pub fn install_entry(&self, entry: &Value) -> Result<bool, ConflistError> {
        self.edit(|list| insert(list, entry))
    }

    /// Makes `entries` our plugin entries in the config list; returns
    /// whether the file changed.
    pub fn install_entries(&self, entries: &[Value]) -> Result<bool, ConflistError> {
        self.edit(|list| set_entries(list, entries))
    }

    /// Removes our entry from the config list (missing directory or file:
    /// nothing to do); returns whether the file changed.
    pub fn remove_entry(&self) -> Result<bool, ConflistError> {
        match self.config_file() {
            Err(ConflistError::NoConfig(_)) => Ok(false),
            Err(ConflistError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
            Ok(_) => self.edit(remove),
        }
    }

    fn edit(&self, f: impl FnOnce(&Value) -> Result<Value, String>) -> Result<bool, ConflistError> {
        let path = self.config_file()?;
        let raw = std::fs::read(&path).map_err(|source| ConflistError::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        let malformed = |why: String| ConflistError::Malformed {
            path: path.clone(),
            why,
        };
        let list: Value = serde_json::from_slice(&raw).map_err(|e| malformed(e.to_string()))?;
        let next = f(&list).map_err(malformed)?;
        if next == list {
            return Ok(false);
        }
        let mut text = serde_json::to_vec_pretty(&next).expect("a JSON value serialises");
        text.push(b'\n');
        replace_atomically(&path, &text, None)?;
        Ok(true)
    }

    /// The plugin's path in the bin directory.
    pub fn plugin_path(&self) -> PathBuf {
        self.bin_dir.join(PLUGIN_TYPE)
    }

    /// Copies `binary` to the bin directory as [`PLUGIN_TYPE`] (a copy, not
    /// a symlink: the agent's binary may live in a container image the host
    /// cannot see); returns whether it changed.
    pub fn install_binary(&self, binary: &Path) -> Result<bool, ConflistError> {
        let bytes = std::fs::read(binary).map_err(|source| ConflistError::Io {
            what: "reading",
            path: binary.to_path_buf(),
            source,
        })?;
        let dest = self.plugin_path();
        if std::fs::read(&dest).ok().as_deref() == Some(&bytes[..]) {
            return Ok(false);
        }
        replace_atomically(&dest, &bytes, Some(0o755))?;
        Ok(true)
    }

    /// Removes the plugin binary (missing is fine).
    pub fn remove_binary(&self) -> Result<bool, ConflistError> {
        let path = self.plugin_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ConflistError::Io {
                what: "removing",
                path,
                source,
            }),
        }
    }
}

/// Writes `bytes` to a hidden temporary file beside `path`, syncs it and
/// renames it over `path`, so readers see the old or the new file, never a
/// part. The standard library has every piece; no kept library does this.
fn replace_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), ConflistError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.vpno-tmp"));
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| ConflistError::Io {
            what,
            path: p,
            source,
        }
    };
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        let perm = match mode {
            Some(m) => std::fs::Permissions::from_mode(m),
            // Keep the replaced file's permissions.
            None => std::fs::metadata(path)
                .map(|m| m.permissions())
                .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o644)),
        };
        f.set_permissions(perm)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", &tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("renaming into", path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster_list() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "plugins": [
                { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    fn ours(mtu: u32) -> Value {
        json!({ "type": PLUGIN_TYPE, "bridge": "vpno-gw0", "mtu": mtu })
    }

    #[test]
    fn insert_appends_after_the_clusters_plugins_and_keeps_them() {
        let got = insert(&cluster_list(), &ours(1420)).unwrap();
        let plugins = got["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(
            plugins[..2],
            cluster_list()["plugins"].as_array().unwrap()[..]
        );
        assert_eq!(plugins[2], ours(1420));
        assert_eq!(got["name"], "cbr0");
        assert_eq!(got["cniVersion"], "1.0.0");
    }

    #[test]
    fn insert_is_idempotent_and_replaces_a_stale_entry() {
        let once = insert(&cluster_list(), &ours(1420)).unwrap();
        assert_eq!(insert(&once, &ours(1420)).unwrap(), once);
        let updated = insert(&once, &ours(1400)).unwrap();
        let plugins = updated["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2]["mtu"], 1400);
    }

    #[test]
    fn remove_takes_exactly_our_entry() {
        let with = insert(&cluster_list(), &ours(1420)).unwrap();
        assert_eq!(remove(&with).unwrap(), cluster_list());
        assert_eq!(remove(&cluster_list()).unwrap(), cluster_list());
    }

    #[test]
    fn set_entries_replaces_all_of_ours_in_order() {
        let one = insert(&cluster_list(), &ours(1420)).unwrap();
        let a = json!({"type": PLUGIN_TYPE, "gateway": {"name": "a"}});
        let b = json!({"type": PLUGIN_TYPE, "gateway": {"name": "b"}});
        let two = set_entries(&one, &[a.clone(), b.clone()]).unwrap();
        let plugins = two["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 4);
        assert_eq!(plugins[2..], [a.clone(), b]);
        assert_eq!(
            set_entries(&two, std::slice::from_ref(&a)).unwrap()["plugins"][2],
            a
        );
        assert_eq!(set_entries(&two, &[]).unwrap(), cluster_list());
    }

    #[test]
    fn not_a_config_list_is_an_error() {
        for (bad, says) in [
            (json!([1, 2]), "not a JSON object"),
            (json!({"type": "bridge"}), "no \"plugins\""),
            (json!({"plugins": {}}), "not an array"),
            (
                json!({"plugins": [{"name": "x"}]}),
                "plugin 0 has no \"type\"",
            ),
        ] {
            let err = insert(&bad, &ours(1420)).unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(remove(&bad).is_err());
        }
    }
}
