//! Reading gluetun's server data from disk, in both layouts.
//!
//! * **Current layout** (gluetun-servers, 2026): `manifest.json` maps each
//!   provider name to `{"filepath": "/gluetun/servers/<provider>.json"}`
//!   (plus a top-level `"version"`), and each provider file holds
//!   `{"version", "timestamp", "servers": [...]}`. As gluetun does, only the
//!   file name of `filepath` is used, resolved in the manifest's directory.
//! * **Legacy layout**: one `servers.json` with a top-level `"version"` and one
//!   key per provider holding `{"version", "timestamp", "servers": [...]}`.
//!
//! Both are read by one parser: a top-level provider entry either carries its
//! `servers` inline or names a `filepath`. Files ending in `.xz` are
//! decompressed in process (pure Rust).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::CatalogError;
use crate::model::{ProviderSummary, RawProviderServers, Server};

/// Which on-disk layout a catalog was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A manifest plus one file per provider.
    Manifest,
    /// One `servers.json` holding every provider.
    SingleFile,
}

/// Servers read from disk, before indexing.
#[derive(Debug, Clone)]
pub(crate) struct LoadedServers {
    pub(crate) layout: Layout,
    pub(crate) source: PathBuf,
    pub(crate) providers: Vec<ProviderSummary>,
    pub(crate) servers: Vec<Server>,
}

/// File names looked for, in order, when the catalog path is a directory.
pub const CANDIDATE_FILES: [&str; 3] = ["manifest.json", "servers.json", "servers.json.xz"];

/// Finds the catalog's top-level file: `path` itself when it is a file, else
/// the first of [`CANDIDATE_FILES`] in the directory, else its only
/// `*.json` / `*.json.xz` file.
pub(crate) fn locate(path: &Path) -> Result<PathBuf, CatalogError> {
    let meta = std::fs::metadata(path).map_err(|source| CatalogError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_file() {
        return Ok(path.to_owned());
    }
    for name in CANDIDATE_FILES {
        let candidate = path.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let entries = std::fs::read_dir(path).map_err(|source| CatalogError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::Io {
            path: path.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".json") || name.ends_with(".json.xz")) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CatalogError::NotFound {
            dir: path.to_owned(),
            found: Vec::new(),
        }),
        _ => {
            found.sort();
            Err(CatalogError::NotFound {
                dir: path.to_owned(),
                found,
            })
        }
    }
}

/// Reads a file, decompressing it when its name ends in `.xz`.
pub(crate) fn read_maybe_xz(path: &Path) -> Result<Vec<u8>, CatalogError> {
    let raw = std::fs::read(path).map_err(|source| CatalogError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !path.to_string_lossy().ends_with(".xz") {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 8);
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(&raw[..]), &mut out).map_err(|e| {
        CatalogError::Xz {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })?;
    Ok(out)
}

/// A provider entry of the top-level file: inline servers or a file reference.
#[derive(Debug, Deserialize)]
struct TopLevelEntry {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    servers: Option<Vec<crate::model::RawServer>>,
    #[serde(default)]
    filepath: Option<String>,
}

/// Loads every provider from `path` (a directory or the top-level file).
pub(crate) fn load(path: &Path) -> Result<LoadedServers, CatalogError> {
    let top_path = locate(path)?;
    let bytes = read_maybe_xz(&top_path)?;
    let top: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|source| CatalogError::Json {
            path: top_path.clone(),
            source,
        })?;
    drop(bytes);
    let base_dir = top_path.parent().map(Path::to_owned).unwrap_or_default();

    let mut providers = Vec::new();
    let mut servers = Vec::new();
    let mut manifest_entries = 0usize;
    for (name, value) in top {
        if name == "version" {
            if !value.is_number() {
                return Err(CatalogError::Format {
                    path: top_path.clone(),
                    message: "top-level \"version\" is not a number".into(),
                });
            }
            continue;
        }
        let entry = TopLevelEntry::deserialize(value).map_err(|source| CatalogError::Json {
            path: top_path.clone(),
            source: with_context(source, &name),
        })?;
        let block = match (entry.servers, entry.filepath) {
            (Some(inline), _) => RawProviderServers {
                version: entry.version.unwrap_or_default(),
                timestamp: entry.timestamp.unwrap_or_default(),
                servers: inline,
            },
            (None, Some(filepath)) => {
                manifest_entries += 1;
                load_provider_file(&base_dir, &name, &filepath)?
            }
            (None, None) => {
                return Err(CatalogError::Format {
                    path: top_path.clone(),
                    message: format!("provider {name:?} has neither \"servers\" nor \"filepath\""),
                });
            }
        };
        providers.push(ProviderSummary {
            name: name.clone(),
            version: block.version,
            timestamp: block.timestamp,
            servers: block.servers.len(),
        });
        servers.extend(block.servers.into_iter().map(|raw| raw.into_server(&name)));
    }
    if providers.is_empty() {
        return Err(CatalogError::Format {
            path: top_path,
            message: "no provider found".into(),
        });
    }
    let layout = if manifest_entries > 0 {
        Layout::Manifest
    } else {
        Layout::SingleFile
    };
    Ok(LoadedServers {
        layout,
        source: top_path,
        providers,
        servers,
    })
}

fn with_context(error: serde_json::Error, provider: &str) -> serde_json::Error {
    serde::de::Error::custom(format!("provider {provider:?}: {error}"))
}

/// Loads one provider file of the manifest layout. Like gluetun, only the
/// file name of `filepath` counts; `<name>.xz` is accepted as well.
fn load_provider_file(
    base_dir: &Path,
    provider: &str,
    filepath: &str,
) -> Result<RawProviderServers, CatalogError> {
    let file_name = Path::new(filepath)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| format!("{provider}.json").into());
    let mut path = base_dir.join(&file_name);
    if !path.is_file() {
        let xz = base_dir.join(format!("{}.xz", file_name.display()));
        if xz.is_file() {
            path = xz;
        }
    }
    let bytes = read_maybe_xz(&path)?;
    let block: RawProviderServers =
        serde_json::from_slice(&bytes).map_err(|source| CatalogError::Json { path, source })?;
    Ok(block)
}

/// Reads the whole of a possibly compressed file into a string (for tests and tools).
pub fn read_to_string(path: &Path) -> Result<String, CatalogError> {
    let bytes = read_maybe_xz(path)?;
    let mut s = String::new();
    std::io::Cursor::new(bytes)
        .read_to_string(&mut s)
        .map_err(|source| CatalogError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(s)
}
