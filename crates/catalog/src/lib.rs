//! gluetun's VPN server catalog: loads both on-disk layouts and answers filtered queries.
//!
//! ```no_run
//! use vpno_catalog::{Catalog, ServerFilter, TextField};
//! let catalog = Catalog::load("../shared/data".as_ref())?;
//! let page = catalog.query(&ServerFilter::default().with(TextField::Country, "sweden"), 0, 10)?;
//! println!("{} servers in Sweden", page.total);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod index;
mod load;
mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use index::{Flag, ServerFilter, TextField, UnknownValue};
pub use load::{CANDIDATE_FILES, Layout, read_to_string};
pub use model::{DEFAULT_VPN, ProviderSummary, Server};

/// Errors loading a catalog from disk.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An `.xz` file could not be decompressed.
    #[error("decompressing {path}: {message}")]
    Xz {
        /// The path.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A file is not valid JSON of the expected shape.
    #[error("parsing {path}: {source}")]
    Json {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A file is JSON but not gluetun server data.
    #[error("{path}: {message}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A directory holds no recognisable catalog file.
    #[error(
        "no gluetun server data in {dir}: expected manifest.json, servers.json, servers.json.xz or a single *.json[.xz] file{}",
        if found.is_empty() { String::new() } else { format!(" (found several: {found:?})") }
    )]
    NotFound {
        /// The directory.
        dir: PathBuf,
        /// Ambiguous candidates, when there were several.
        found: Vec<PathBuf>,
    },
}

/// One page of a filtered server listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPage<'a> {
    /// Number of servers matching the filter (all pages).
    pub total: usize,
    /// The servers of this page, in catalog order.
    pub servers: Vec<&'a Server>,
}

/// provider → country → city → number of servers. Servers without a country
/// or city are counted under [`UNKNOWN_LOCATION`].
pub type LocationTree = BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>;

/// Key used in a [`LocationTree`] for a missing country or city.
pub const UNKNOWN_LOCATION: &str = "(unknown)";

/// An indexed, immutable gluetun server catalog. Cheap to query from many
/// threads; reloading builds a new one.
#[derive(Debug, Clone)]
pub struct Catalog {
    layout: Layout,
    source: PathBuf,
    providers: Vec<ProviderSummary>,
    servers: Vec<Server>,
    index: index::ServerIndex,
}

impl Catalog {
    /// Loads a catalog from a directory (either layout, or a single
    /// `*.json[.xz]` file in it) or from the top-level file itself.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let started = std::time::Instant::now();
        let loaded = load::load(path)?;
        let catalog = Self::from_parts(
            loaded.layout,
            loaded.source,
            loaded.providers,
            loaded.servers,
        );
        tracing::info!(
            source = %catalog.source.display(),
            layout = ?catalog.layout,
            providers = catalog.providers.len(),
            servers = catalog.servers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "catalog loaded"
        );
        Ok(catalog)
    }

    fn from_parts(
        layout: Layout,
        source: PathBuf,
        providers: Vec<ProviderSummary>,
        servers: Vec<Server>,
    ) -> Self {
        let index = index::ServerIndex::build(&servers);
        Catalog {
            layout,
            source,
            providers,
            servers,
            index,
        }
    }

    /// The layout the catalog was read from.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The top-level file the catalog was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every provider, sorted by name.
    pub fn providers(&self) -> &[ProviderSummary] {
        &self.providers
    }

    /// Every server, in catalog order (providers by name, then file order).
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Every distinct value of `field`, sorted case-insensitively, in its
    /// original spelling.
    pub fn values(&self, field: TextField) -> Vec<String> {
        self.index.values(field)
    }

    /// Whether any server has `value` (case-insensitive) in `field`.
    pub fn has_value(&self, field: TextField, value: &str) -> bool {
        self.index.has_value(field, value)
    }

    /// All servers matching `filter`. A text value no server has is an
    /// [`UnknownValue`] error (so typos are reported, not answered with
    /// nothing); a valid combination that matches nothing is an empty list.
    pub fn matching(&self, filter: &ServerFilter) -> Result<Vec<&Server>, UnknownValue> {
        Ok(self
            .index
            .query(filter)?
            .into_iter()
            .map(|pos| &self.servers[pos as usize])
            .collect())
    }

    /// Number of servers matching `filter`.
    pub fn count(&self, filter: &ServerFilter) -> Result<usize, UnknownValue> {
        Ok(self.index.query(filter)?.len())
    }

    /// One page (`offset`, at most `limit` servers) of the servers matching
    /// `filter`, with the total count.
    pub fn query(
        &self,
        filter: &ServerFilter,
        offset: usize,
        limit: usize,
    ) -> Result<ServerPage<'_>, UnknownValue> {
        let positions = self.index.query(filter)?;
        let total = positions.len();
        let servers = positions
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|pos| &self.servers[pos as usize])
            .collect();
        Ok(ServerPage { total, servers })
    }

    /// provider → country → city → server count over the servers matching `filter`.
    pub fn locations(&self, filter: &ServerFilter) -> Result<LocationTree, UnknownValue> {
        let mut tree = LocationTree::new();
        for pos in self.index.query(filter)? {
            let server = &self.servers[pos as usize];
            let country = server.country.as_deref().unwrap_or(UNKNOWN_LOCATION);
            let city = server.city.as_deref().unwrap_or(UNKNOWN_LOCATION);
            *tree
                .entry(server.provider.clone())
                .or_default()
                .entry(country.to_owned())
                .or_default()
                .entry(city.to_owned())
                .or_default() += 1;
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(provider: &str, country: &str, city: &str, host: &str) -> Server {
        Server {
            provider: provider.into(),
            vpn: "openvpn".into(),
            country: Some(country.into()),
            region: None,
            city: Some(city.into()),
            isp: None,
            hostname: Some(host.into()),
            server_name: None,
            number: None,
            ips: vec![],
            wgpubkey: None,
            x509: None,
            tcp: true,
            udp: false,
            port_forward: false,
            owned: false,
            free: false,
            premium: false,
            stream: false,
            secure_core: false,
            tor: false,
            multihop: false,
            categories: vec![],
        }
    }

    fn small() -> Catalog {
        let mut servers = vec![
            server("alpha", "Sweden", "Stockholm", "se1.alpha"),
            server("alpha", "Sweden", "Malmo", "se2.alpha"),
            server("alpha", "Norway", "Oslo", "no1.alpha"),
            server("beta", "Sweden", "Stockholm", "se1.beta"),
        ];
        servers[1].port_forward = true;
        servers[3].port_forward = true;
        servers[3].vpn = "wireguard".into();
        let providers = vec![
            ProviderSummary {
                name: "alpha".into(),
                version: 1,
                timestamp: 0,
                servers: 3,
            },
            ProviderSummary {
                name: "beta".into(),
                version: 1,
                timestamp: 0,
                servers: 1,
            },
        ];
        Catalog::from_parts(Layout::SingleFile, PathBuf::new(), providers, servers)
    }

    fn hosts(servers: Vec<&Server>) -> Vec<&str> {
        servers
            .into_iter()
            .map(|s| s.hostname.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn filters_intersect_fields_and_union_values() {
        let c = small();
        let f = ServerFilter::default()
            .with(TextField::Country, "SWEDEN")
            .with(TextField::Provider, "alpha");
        assert_eq!(hosts(c.matching(&f).unwrap()), ["se1.alpha", "se2.alpha"]);
        let f = ServerFilter::default()
            .with(TextField::City, "oslo")
            .with(TextField::City, "Malmo");
        assert_eq!(hosts(c.matching(&f).unwrap()), ["se2.alpha", "no1.alpha"]);
        let f = ServerFilter::default().with_flag(Flag::PortForward, false);
        assert_eq!(hosts(c.matching(&f).unwrap()), ["se1.alpha", "no1.alpha"]);
        let f = ServerFilter::default()
            .with_flag(Flag::PortForward, true)
            .with(TextField::Vpn, "WireGuard");
        assert_eq!(hosts(c.matching(&f).unwrap()), ["se1.beta"]);
        let f = ServerFilter::default()
            .with(TextField::Provider, "beta")
            .with(TextField::Country, "norway");
        assert!(c.matching(&f).unwrap().is_empty());
    }

    #[test]
    fn unknown_values_are_errors_listing_valid_values() {
        let c = small();
        let err = c
            .matching(&ServerFilter::default().with(TextField::Country, "Narnia"))
            .unwrap_err();
        assert_eq!(err.field, TextField::Country);
        assert_eq!(err.valid, ["Norway", "Sweden"]);
    }

    #[test]
    fn paging_and_locations() {
        let c = small();
        let page = c.query(&ServerFilter::default(), 1, 2).unwrap();
        assert_eq!(page.total, 4);
        assert_eq!(hosts(page.servers), ["se2.alpha", "no1.alpha"]);
        assert!(
            c.query(&ServerFilter::default(), 10, 2)
                .unwrap()
                .servers
                .is_empty()
        );
        let tree = c.locations(&ServerFilter::default()).unwrap();
        assert_eq!(tree["alpha"]["Sweden"]["Stockholm"], 1);
        assert_eq!(tree["alpha"]["Sweden"].values().sum::<usize>(), 2);
        assert_eq!(tree["beta"]["Sweden"]["Stockholm"], 1);
    }
}
