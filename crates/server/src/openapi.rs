//! The OpenAPI document: generated from the handlers and types
//! ([`ApiDoc`]), then completed with the catalog in force ([`document`]) so
//! that it says exactly which filter values the API accepts. A request the
//! document calls valid is never refused for its shape or its values.

use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use vpno_catalog::{Catalog, TextField};

use crate::error::ErrorBody;
use crate::proxy::{CreateProxyRequest, MAX_VALUE_LEN, ProviderTag, Proxy, ProxyList};
use crate::routes::{self, Health};
use crate::servers::{self, CatalogSummary, Locations, ServerList};

/// A string schema: 1 to `max_length` characters, at least one not white
/// space when `visible` (what [`crate::proxy::CreateProxyRequest::validate`]
/// and the query parser demand of every value).
pub fn text_schema(description: &str, max_length: Option<usize>, visible: bool) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(max_length)
        .pattern(visible.then_some(r"\S"))
        .into()
}

/// Declares documentation-only string types whose schemas [`document`]
/// completes with the catalog's values (utoipa's derive cannot put length
/// limits on a newtype, hence by hand).
macro_rules! catalog_value {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                text_schema(
                    concat!(stringify!($name), " of a catalog server, matched ignoring case; the served document lists the values"),
                    None,
                    false,
                )
            }
        }
        impl ToSchema for $name {}
    )*};
}

catalog_value! {
    /// A gluetun provider name of the catalog.
    ProviderName;
    /// A country of the catalog.
    Country;
    /// A region of the catalog.
    Region;
    /// A city of the catalog.
    City;
    /// A server hostname of the catalog.
    Hostname;
}

/// The VPN protocol.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum VpnProtocol {
    /// WireGuard.
    Wireguard,
    /// OpenVPN.
    Openvpn,
}

/// The catalog-valued schemas and the field whose values they list.
const CATALOG_SCHEMAS: [(&str, TextField); 5] = [
    ("ProviderName", TextField::Provider),
    ("Country", TextField::Country),
    ("Region", TextField::Region),
    ("City", TextField::City),
    ("Hostname", TextField::Hostname),
];

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this API, generated from the handlers and types;
/// [`document`] completes it with the catalog's values.
#[derive(OpenApi)]
#[openapi(
    info(title = "vpn-operator proxy API", description = "On-demand VPN HTTP proxies and gluetun's server catalog."),
    paths(
        routes::health,
        servers::list_servers, servers::locations, servers::refresh,
        routes::create_proxy, routes::list_proxies, routes::get_proxy, routes::delete_proxy,
        routes::start_alias, routes::status_list_alias, routes::status_alias,
        routes::destroy_alias, routes::destroy_post_alias,
    ),
    components(schemas(
        ErrorBody, Health, ServerList, Locations, CatalogSummary, CreateProxyRequest, Proxy,
        ProxyList, ProviderName, ProviderTag, Country, Region, City, Hostname, VpnProtocol,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "catalog", description = "gluetun's VPN servers"),
        (name = "proxies", description = "HTTP proxies through VPN slots"),
        (name = "aliases", description = "Names an earlier API used"),
        (name = "meta", description = "Health and documentation"),
    )
)]
pub struct ApiDoc;

/// The document served at `/openapi.json`: [`ApiDoc`] with the values of
/// `catalog` as the `enum` of each catalog-valued schema, so that a client
/// (or a generator of test requests) knows every value a filter accepts.
/// A field without values in the catalog accepts none (`not: {}`).
pub fn document(catalog: &Catalog) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    camel_case_links(&mut doc);
    for (name, field) in CATALOG_SCHEMAS {
        let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        // Longer values could never be sent: the API refuses them.
        let values: Vec<Value> = catalog
            .values(field)
            .into_iter()
            .filter(|v| v.chars().count() <= MAX_VALUE_LEN)
            .map(Value::String)
            .collect();
        if values.is_empty() {
            schema.insert("not".into(), Value::Object(Default::default()));
        } else {
            schema.insert("enum".into(), Value::Array(values));
        }
    }
    doc
}

/// utoipa 5.5 serialises Link objects with snake_case keys (`operation_id`);
/// OpenAPI spells them `operationId`, `operationRef`, `requestBody`.
fn camel_case_links(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.into(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../catalog/testdata/manifest");
        Catalog::load(&path).unwrap()
    }

    #[test]
    fn catalog_values_become_enums_referenced_by_every_filter() {
        let catalog = catalog();
        let doc = document(&catalog);
        let countries = doc["components"]["schemas"]["Country"]["enum"]
            .as_array()
            .unwrap();
        assert_eq!(countries.len(), catalog.values(TextField::Country).len());
        assert!(countries.contains(&Value::from("Sweden")));
        let vpn = &doc["components"]["schemas"]["VpnProtocol"]["enum"];
        assert_eq!(vpn, &serde_json::json!(["wireguard", "openvpn"]));
        let link = &doc["paths"]["/proxies"]["post"]["responses"]["201"]["links"]["GetProxy"];
        assert_eq!(link["operationId"], "get_proxy", "{link}");
        assert!(link.get("operation_id").is_none());
        let text = doc.to_string();
        for name in ["ProviderName", "Country", "Region", "City", "Hostname"] {
            let reference = format!("\"#/components/schemas/{name}\"");
            assert!(
                text.matches(&reference).count() >= 3,
                "{name} is referenced by /servers, /locations and the request body"
            );
        }
    }
}
