//! The HTTP surface: proxy handlers, health, the OpenAPI document and the
//! router that ties them to the catalog handlers.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{self, TokenSet};
use crate::error::{ErrorBody, HttpError};
use crate::metrics::{ApiMetrics, RequestLabels, RouteLabels};
use crate::proxy::{CreateProxyRequest, Proxy, ProxyList};
use crate::servers::{self, CatalogHandle};
use crate::store::{ProxyStore, StoreError};

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The server catalog.
    pub catalog: CatalogHandle,
    /// Proxy storage; `None` when running without Kubernetes.
    pub proxies: Option<ProxyStore>,
    /// Accepted bearer tokens.
    pub tokens: TokenSet,
    /// Request metrics.
    pub metrics: ApiMetrics,
}

impl FromRef<AppState> for CatalogHandle {
    fn from_ref(state: &AppState) -> Self {
        state.catalog.clone()
    }
}

impl FromRef<AppState> for ApiMetrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

impl FromRef<AppState> for TokenSet {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

impl AppState {
    fn store(&self) -> Result<&ProxyStore, HttpError> {
        self.proxies.as_ref().ok_or_else(|| {
            HttpError::unavailable(
                "proxies are disabled: this API instance runs without Kubernetes (--catalog-only)",
            )
        })
    }
}

impl From<StoreError> for HttpError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Full { .. } => HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_proxies",
                err.to_string(),
            ),
            StoreError::Kube(e) => {
                tracing::warn!(error = %e, "Kubernetes API request failed");
                HttpError::unavailable(format!("the Kubernetes API failed: {e}"))
            }
        }
    }
}

/// JSON body extractor whose rejections are [`HttpError`]s (JSON, 4xx).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// Answer of `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the API answers.
    pub status: String,
    /// Servers in the catalog.
    pub servers: usize,
    /// Providers in the catalog.
    pub providers: usize,
    /// Whether proxies can be managed (Kubernetes configured).
    pub proxies_enabled: bool,
}

/// Liveness and a short summary; needs no token.
#[utoipa::path(
    get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "The API is up", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let catalog = state.catalog.get();
    Json(Health {
        status: "ok".into(),
        servers: catalog.servers().len(),
        providers: catalog.providers().len(),
        proxies_enabled: state.proxies.is_some(),
    })
}

async fn create(
    state: &AppState,
    request: CreateProxyRequest,
) -> Result<(StatusCode, Json<Proxy>), HttpError> {
    let store = state.store()?;
    let matching = request.validate(&state.catalog.get())?;
    tracing::debug!(matching, "proxy request validated");
    let proxy = store.create(request).await?;
    Ok((StatusCode::CREATED, Json(proxy)))
}

async fn fetch(state: &AppState, id: &str) -> Result<Json<Proxy>, HttpError> {
    match state.store()?.get(id).await? {
        Some(p) => Ok(Json(p)),
        None => Err(HttpError::not_found(format!("no proxy {id:?}"))),
    }
}

async fn remove(state: &AppState, id: &str) -> Result<Json<Proxy>, HttpError> {
    match state.store()?.delete(id).await? {
        Some(p) => Ok(Json(p)),
        None => Err(HttpError::not_found(format!("no proxy {id:?}"))),
    }
}

async fn list(state: &AppState) -> Result<Json<ProxyList>, HttpError> {
    let proxies = state.store()?.list().await?;
    Ok(Json(ProxyList {
        total: proxies.len(),
        proxies,
    }))
}

/// Creates an HTTP proxy exiting through a VPN slot.
#[utoipa::path(
    post, path = "/proxies", tag = "proxies", request_body = CreateProxyRequest,
    responses(
        (status = 201, description = "Created; `state` tells whether it still waits for a VPN slot", body = Proxy,
            links(
                ("GetProxy" = (operation_id = "get_proxy", parameters(("id" = "$response.body#/id")))),
                ("DeleteProxy" = (operation_id = "delete_proxy", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed body or a filter value outside the catalog", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 409, description = "`no_matching_server`: every value is in the catalog, but no server has them together", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 422, description = "Body does not match the schema", body = ErrorBody),
        (status = 429, description = "The instance limit (--max-proxies) is reached", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn create_proxy(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateProxyRequest>,
) -> Result<(StatusCode, Json<Proxy>), HttpError> {
    create(&state, request).await
}

/// Alias of `POST /proxies` (the name an earlier API used).
#[utoipa::path(
    post, path = "/start", tag = "aliases", request_body = CreateProxyRequest,
    responses(
        (status = 201, description = "Created", body = Proxy,
            links(
                ("Status" = (operation_id = "status_alias", parameters(("id" = "$response.body#/id")))),
                ("Destroy" = (operation_id = "destroy_alias", parameters(("id" = "$response.body#/id")))),
                ("DestroyByPost" = (operation_id = "destroy_post_alias", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed body or a filter value outside the catalog", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 409, description = "`no_matching_server`: every value is in the catalog, but no server has them together", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 422, description = "Body does not match the schema", body = ErrorBody),
        (status = 429, description = "The instance limit (--max-proxies) is reached", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn start_alias(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateProxyRequest>,
) -> Result<(StatusCode, Json<Proxy>), HttpError> {
    create(&state, request).await
}

/// Lists every proxy (without credentials).
#[utoipa::path(
    get, path = "/proxies", tag = "proxies",
    responses(
        (status = 200, description = "All proxies", body = ProxyList),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn list_proxies(State(state): State<AppState>) -> Result<Json<ProxyList>, HttpError> {
    list(&state).await
}

/// Alias of `GET /proxies`.
#[utoipa::path(
    get, path = "/status", tag = "aliases",
    responses(
        (status = 200, description = "All proxies", body = ProxyList),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn status_list_alias(
    State(state): State<AppState>,
) -> Result<Json<ProxyList>, HttpError> {
    list(&state).await
}

/// One proxy with its credentials; a pending proxy says why it waits.
#[utoipa::path(
    get, path = "/proxies/{id}", tag = "proxies",
    params(("id" = String, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "The proxy", body = Proxy),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such proxy", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn get_proxy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, HttpError> {
    fetch(&state, &id).await
}

/// Alias of `GET /proxies/{id}`.
#[utoipa::path(
    get, path = "/status/{id}", tag = "aliases",
    params(("id" = String, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "The proxy", body = Proxy),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such proxy", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn status_alias(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, HttpError> {
    fetch(&state, &id).await
}

/// Deletes a proxy; its VPN slot frees once its Pod is gone.
#[utoipa::path(
    delete, path = "/proxies/{id}", tag = "proxies",
    params(("id" = String, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "Deletion started", body = Proxy),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such proxy", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn delete_proxy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, HttpError> {
    remove(&state, &id).await
}

/// Alias of `DELETE /proxies/{id}`.
#[utoipa::path(
    delete, path = "/destroy/{id}", tag = "aliases",
    params(("id" = String, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "Deletion started", body = Proxy),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such proxy", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn destroy_alias(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, HttpError> {
    remove(&state, &id).await
}

/// Alias of `DELETE /proxies/{id}` for clients that can only POST.
#[utoipa::path(
    post, path = "/destroy/{id}", tag = "aliases",
    params(("id" = String, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "Deletion started", body = Proxy),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "No such proxy", body = ErrorBody),
        (status = 503, description = "Kubernetes unavailable or not configured", body = ErrorBody),
    )
)]
pub async fn destroy_post_alias(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, HttpError> {
    remove(&state, &id).await
}

/// The OpenAPI document as JSON, with the catalog in force; needs no token.
pub async fn openapi_json(State(catalog): State<CatalogHandle>) -> Response {
    Json(crate::openapi::document(&catalog.get())).into_response()
}

async fn not_found() -> HttpError {
    HttpError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path; see /openapi.json",
    )
}

/// Prometheus metrics; needs no token.
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn observe_requests(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.to_string(),
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .durations
        .get_or_create(&RouteLabels {
            method: method.to_string(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    tracing::debug!(%method, route, status, micros = elapsed.as_micros() as u64, "request");
    response
}

/// Default request body limit.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// The complete router: public `/health` and `/openapi.json`, everything else
/// behind bearer-token auth, bodies limited to `body_limit` bytes.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let protected = Router::new()
        .route("/servers", get(servers::list_servers))
        .route("/servers/refresh", post(servers::refresh))
        .route("/locations", get(servers::locations))
        .route("/proxies", post(create_proxy).get(list_proxies))
        .route("/proxies/{id}", get(get_proxy).delete(delete_proxy))
        .route("/start", post(start_alias))
        .route("/status", get(status_list_alias))
        .route("/status/{id}", get(status_alias))
        .route(
            "/destroy/{id}",
            post(destroy_post_alias).delete(destroy_alias),
        )
        .route_layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics_text))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            observe_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
