//! `GET /servers`, `GET /locations`, `POST /servers/refresh`: the catalog over HTTP.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use vpno_catalog::{Catalog, Flag, LocationTree, ProviderSummary, Server, ServerFilter, TextField};

use crate::error::{ErrorBody, HttpError};
use crate::openapi::{City, Country, Hostname, ProviderName, Region, VpnProtocol};

/// Default page size of `GET /servers`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of `GET /servers`.
pub const MAX_LIMIT: usize = 1000;
/// Largest `offset` of `GET /servers` (far beyond any catalog).
pub const MAX_OFFSET: usize = u32::MAX as usize;

/// The loaded catalog, swappable by `POST /servers/refresh`.
#[derive(Clone)]
pub struct CatalogHandle {
    path: PathBuf,
    current: Arc<RwLock<Arc<Catalog>>>,
}

impl std::fmt::Debug for CatalogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogHandle")
            .field("path", &self.path)
            .finish()
    }
}

impl CatalogHandle {
    /// Wraps a loaded catalog that was read from `path`.
    pub fn new(path: PathBuf, catalog: Catalog) -> Self {
        CatalogHandle {
            path,
            current: Arc::new(RwLock::new(Arc::new(catalog))),
        }
    }

    /// The catalog in force.
    pub fn get(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the catalog again from disk; on failure the old one stays.
    pub async fn reload(&self) -> Result<Arc<Catalog>, vpno_catalog::CatalogError> {
        let path = self.path.clone();
        let catalog = tokio::task::spawn_blocking(move || Catalog::load(&path))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let catalog = Arc::new(catalog);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = catalog.clone();
        Ok(catalog)
    }
}

/// Query parameters of `GET /servers` (documentation; parsed by [`parse_server_query`]).
/// Text filters match case-insensitively and may be repeated (any value matches);
/// different parameters must all match. The values each filter accepts are
/// the `enum` of its schema in the served document.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ServersQuery {
    /// gluetun provider name, e.g. `mullvad` or `private internet access`.
    #[param(value_type = Option<Vec<ProviderName>>, style = Form, explode)]
    provider: Option<Vec<String>>,
    /// Country, e.g. `Sweden`.
    #[param(value_type = Option<Vec<Country>>, style = Form, explode)]
    country: Option<Vec<String>>,
    /// Region, e.g. `Europe` or `SE Stockholm`.
    #[param(value_type = Option<Vec<Region>>, style = Form, explode)]
    region: Option<Vec<String>>,
    /// City, e.g. `Stockholm`.
    #[param(value_type = Option<Vec<City>>, style = Form, explode)]
    city: Option<Vec<String>>,
    /// Exact hostname.
    #[param(value_type = Option<Vec<Hostname>>, style = Form, explode)]
    hostname: Option<Vec<String>>,
    /// `wireguard` or `openvpn`.
    #[param(value_type = Option<Vec<VpnProtocol>>, style = Form, explode)]
    vpn: Option<Vec<String>>,
    /// Port forwarding offered.
    port_forward: Option<bool>,
    /// Provider-owned hardware.
    owned: Option<bool>,
    /// Free-account server.
    free: Option<bool>,
    /// Premium-only server.
    premium: Option<bool>,
    /// Streaming server.
    stream: Option<bool>,
    /// Secure Core server.
    secure_core: Option<bool>,
    /// Tor server.
    tor: Option<bool>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Servers to skip (default 0).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    offset: Option<u64>,
}

/// Query parameters of `GET /locations`: the filters of `GET /servers`, without paging.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LocationsQuery {
    /// gluetun provider name, e.g. `mullvad` or `private internet access`.
    #[param(value_type = Option<Vec<ProviderName>>, style = Form, explode)]
    provider: Option<Vec<String>>,
    /// Country, e.g. `Sweden`.
    #[param(value_type = Option<Vec<Country>>, style = Form, explode)]
    country: Option<Vec<String>>,
    /// Region, e.g. `Europe` or `SE Stockholm`.
    #[param(value_type = Option<Vec<Region>>, style = Form, explode)]
    region: Option<Vec<String>>,
    /// City, e.g. `Stockholm`.
    #[param(value_type = Option<Vec<City>>, style = Form, explode)]
    city: Option<Vec<String>>,
    /// Exact hostname.
    #[param(value_type = Option<Vec<Hostname>>, style = Form, explode)]
    hostname: Option<Vec<String>>,
    /// `wireguard` or `openvpn`.
    #[param(value_type = Option<Vec<VpnProtocol>>, style = Form, explode)]
    vpn: Option<Vec<String>>,
    /// Port forwarding offered.
    port_forward: Option<bool>,
    /// Provider-owned hardware.
    owned: Option<bool>,
    /// Free-account server.
    free: Option<bool>,
    /// Premium-only server.
    premium: Option<bool>,
    /// Streaming server.
    stream: Option<bool>,
    /// Secure Core server.
    secure_core: Option<bool>,
    /// Tor server.
    tor: Option<bool>,
}

/// A parsed `GET /servers` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerQuery {
    /// The filter.
    pub filter: ServerFilter,
    /// Servers to skip.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
}

fn parse_bool(name: &str, value: &str) -> Result<bool, HttpError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(HttpError::bad_request(format!(
            "{name} must be true or false, not {value:?}"
        ))),
    }
}

fn parse_usize(name: &str, value: &str) -> Result<usize, HttpError> {
    value.parse().map_err(|_| {
        HttpError::bad_request(format!(
            "{name} must be a non-negative integer, not {value:?}"
        ))
    })
}

/// Parses the query string of `GET /servers` (with `paging`) or `GET /locations`.
/// Unknown parameters, malformed booleans and out-of-range paging are 400s.
pub fn parse_server_query(raw: Option<&str>, paging: bool) -> Result<ServerQuery, HttpError> {
    let mut query = ServerQuery {
        filter: ServerFilter::default(),
        offset: 0,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if let Some(field) = TextField::from_name(&name) {
            if value.trim().is_empty() {
                return Err(HttpError::bad_request(format!("{name} must not be empty")));
            }
            query
                .filter
                .text
                .entry(field)
                .or_default()
                .push(value.into_owned());
        } else if let Some(flag) = Flag::from_name(&name) {
            query.filter.flags.insert(flag, parse_bool(&name, &value)?);
        } else if paging && name == "limit" {
            query.limit = parse_usize(&name, &value)?;
            if !(1..=MAX_LIMIT).contains(&query.limit) {
                return Err(HttpError::bad_request(format!(
                    "limit must be between 1 and {MAX_LIMIT}"
                )));
            }
        } else if paging && name == "offset" {
            query.offset = parse_usize(&name, &value)?;
            if query.offset > MAX_OFFSET {
                return Err(HttpError::bad_request(format!(
                    "offset must be at most {MAX_OFFSET}"
                )));
            }
        } else {
            let mut accepted: Vec<&str> = TextField::ALL.iter().map(|f| f.name()).collect();
            accepted.extend(Flag::ALL.iter().map(|f| f.name()));
            if paging {
                accepted.extend(["limit", "offset"]);
            }
            return Err(HttpError::bad_request(format!(
                "unknown query parameter {name:?}; accepted: {}",
                accepted.join(", ")
            )));
        }
    }
    if let Some(values) = query.filter.text.get(&TextField::Vpn)
        && let Some(bad) = values
            .iter()
            .find(|v| !matches!(v.to_ascii_lowercase().as_str(), "wireguard" | "openvpn"))
    {
        return Err(HttpError::bad_request(format!(
            "vpn must be wireguard or openvpn, not {bad:?}"
        )));
    }
    Ok(query)
}

/// One page of servers.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ServerList {
    /// Servers matching the filters, on all pages.
    pub total: usize,
    /// Servers skipped.
    pub offset: usize,
    /// Page size asked for.
    pub limit: usize,
    /// This page.
    pub servers: Vec<Server>,
}

/// The location tree.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Locations {
    /// Servers counted.
    pub total: usize,
    /// provider → country → city → number of servers; a missing country or
    /// city is counted under `(unknown)`.
    #[schema(value_type = std::collections::BTreeMap<String, std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>>)]
    pub providers: LocationTree,
}

/// What a catalog holds.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct CatalogSummary {
    /// `manifest` or `single_file`.
    pub layout: String,
    /// The file it was read from.
    pub source: String,
    /// Number of servers.
    pub servers: usize,
    /// Every provider.
    pub providers: Vec<ProviderSummary>,
}

impl CatalogSummary {
    /// Summarises `catalog`.
    pub fn of(catalog: &Catalog) -> Self {
        CatalogSummary {
            layout: match catalog.layout() {
                vpno_catalog::Layout::Manifest => "manifest".into(),
                vpno_catalog::Layout::SingleFile => "single_file".into(),
            },
            source: catalog.source().display().to_string(),
            servers: catalog.servers().len(),
            providers: catalog.providers().to_vec(),
        }
    }
}

/// Lists servers matching the filters, one page at a time.
#[utoipa::path(
    get, path = "/servers", tag = "catalog",
    params(ServersQuery),
    responses(
        (status = 200, description = "One page of matching servers", body = ServerList),
        (status = 400, description = "Unknown filter value or malformed parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
    )
)]
pub async fn list_servers(
    State(catalog): State<CatalogHandle>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ServerList>, HttpError> {
    let query = parse_server_query(raw.as_deref(), true)?;
    let catalog = catalog.get();
    let page = catalog
        .query(&query.filter, query.offset, query.limit)
        .map_err(HttpError::unknown_value)?;
    Ok(Json(ServerList {
        total: page.total,
        offset: query.offset,
        limit: query.limit,
        servers: page.servers.into_iter().cloned().collect(),
    }))
}

/// Counts servers per provider, country and city.
#[utoipa::path(
    get, path = "/locations", tag = "catalog",
    params(LocationsQuery),
    responses(
        (status = 200, description = "provider → country → city → server count", body = Locations),
        (status = 400, description = "Unknown filter value or malformed parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
    )
)]
pub async fn locations(
    State(catalog): State<CatalogHandle>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Locations>, HttpError> {
    let query = parse_server_query(raw.as_deref(), false)?;
    let catalog = catalog.get();
    let tree = catalog
        .locations(&query.filter)
        .map_err(HttpError::unknown_value)?;
    let total = tree
        .values()
        .flat_map(|c| c.values())
        .flat_map(|c| c.values())
        .sum();
    Ok(Json(Locations {
        total,
        providers: tree,
    }))
}

/// Reloads the catalog from disk; on failure the previous catalog stays in force.
#[utoipa::path(
    post, path = "/servers/refresh", tag = "catalog",
    responses(
        (status = 200, description = "The catalog now in force", body = CatalogSummary),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 500, description = "The catalog on disk could not be read; the old one stays", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(catalog): State<CatalogHandle>,
) -> Result<Json<CatalogSummary>, HttpError> {
    match catalog.reload().await {
        Ok(c) => Ok(Json(CatalogSummary::of(&c))),
        Err(e) => {
            tracing::warn!(error = %e, "catalog reload failed; keeping the previous catalog");
            Err(HttpError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "catalog_reload_failed",
                format!("{e}; the previous catalog stays in force"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_server_query(
            Some("country=Sweden&country=Norway&port_forward=true&limit=5&offset=10"),
            true,
        )
        .unwrap();
        assert_eq!(q.filter.text[&TextField::Country], ["Sweden", "Norway"]);
        assert!(q.filter.flags[&Flag::PortForward]);
        assert_eq!((q.offset, q.limit), (10, 5));
        let q = parse_server_query(Some("city=Washington%2C+DC"), true).unwrap();
        assert_eq!(q.filter.text[&TextField::City], ["Washington, DC"]);
        assert_eq!(parse_server_query(None, true).unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "offset=-1",
            "offset=4294967296",
            "tor=maybe",
            "colour=red",
            "vpn=ipsec",
            "country=",
        ] {
            let err = parse_server_query(Some(bad), true).unwrap_err();
            assert_eq!(err.status, 400, "{bad}");
        }
        assert!(parse_server_query(Some("limit=5"), false).is_err());
    }
}
