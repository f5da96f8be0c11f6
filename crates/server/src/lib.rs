//! REST API for on-demand VPN HTTP proxies, and gluetun's server catalog over HTTP.
//!
//! `vpn-operator api` serves the catalog (`/servers`, `/locations`) and
//! manages proxies (`/proxies`): each proxy is a Mask (a VPN slot of the Mask
//! API) plus, once the slot is assigned, a gluetun Pod with its HTTP proxy
//! and a Service. All proxy state lives in the API server, so replicas agree
//! and restarts lose nothing; the instance limit is a fixed set of slot
//! Leases whose creation conflicts.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod auth;
pub mod bench;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod pod_status;
pub mod proxy;
pub mod routes;
pub mod servers;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::TokenSet;
pub use openapi::ApiDoc;
pub use proxy::{ImagePullPolicy, PodTemplate};
pub use routes::{AppState, DEFAULT_BODY_LIMIT, router};
pub use servers::CatalogHandle;
pub use store::ProxyStore;

/// Default gluetun image of proxy Pods.
pub const DEFAULT_PROXY_IMAGE: &str = "qmcgaw/gluetun:v3";
/// Default HTTP proxy port.
pub const DEFAULT_PROXY_PORT: u16 = 8888;

/// Command-line arguments of `vpn-operator api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "VPNO_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// gluetun server data: a directory (manifest.json + provider files,
    /// servers.json, servers.json.xz, or a single *.json[.xz]) or the file itself.
    #[arg(long, env = "VPNO_CATALOG", value_name = "DIR")]
    pub catalog: PathBuf,
    /// File of accepted bearer tokens, one per line (`#` comments allowed).
    #[arg(long, env = "VPNO_API_TOKENS_FILE", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Secret (in --namespace) whose values hold accepted bearer tokens, one per line.
    #[arg(long, env = "VPNO_API_TOKENS_SECRET", value_name = "NAME")]
    pub tokens_secret: Option<String>,
    /// Most proxies that may exist at once, across all replicas.
    #[arg(long, env = "VPNO_API_MAX_PROXIES", value_name = "N")]
    pub max_proxies: Option<u32>,
    /// Namespace of proxies (Masks, Pods, Services, Secrets); default: the kubeconfig's.
    #[arg(long, env = "VPNO_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config or in-cluster.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// gluetun image of proxy Pods.
    #[arg(long, env = "VPNO_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// `imagePullPolicy` of proxy Pods (`Never` for images imported onto the
    /// nodes); default: Kubernetes' own (`Always` for `:latest`, else `IfNotPresent`).
    #[arg(long, env = "VPNO_PROXY_IMAGE_PULL_POLICY", value_name = "POLICY")]
    pub proxy_image_pull_policy: Option<ImagePullPolicy>,
    /// HTTP proxy port of proxy Pods and Services.
    #[arg(long, env = "VPNO_PROXY_PORT", default_value_t = DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "VPNO_API_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Serve only the catalog, without Kubernetes (proxy endpoints answer 503).
    #[arg(long)]
    pub catalog_only: bool,
}

/// Errors of `vpn-operator api`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The catalog could not be loaded.
    #[error("loading the server catalog: {0}")]
    Catalog(#[from] vpno_catalog::CatalogError),
    /// The token file could not be read.
    #[error("reading the token file {path}: {source}")]
    Tokens {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No token was configured.
    #[error("no bearer token configured: pass --tokens FILE and/or --tokens-secret NAME")]
    NoTokens,
    /// The Kubernetes client could not be set up.
    #[error("Kubernetes client: {0}")]
    KubeConfig(String),
    /// A Kubernetes request failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The token Secret does not exist.
    #[error("token Secret {namespace}/{name} not found")]
    TokenSecretNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The listen address could not be bound or served.
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Everything an API instance needs, independent of the command line.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Catalog path.
    pub catalog: PathBuf,
    /// Accepted bearer tokens.
    pub tokens: TokenSet,
    /// Namespace of proxies.
    pub namespace: String,
    /// Instance limit.
    pub max_proxies: Option<u32>,
    /// How proxy Pods are built.
    pub template: PodTemplate,
    /// Largest accepted request body.
    pub body_limit: usize,
}

impl ApiConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(catalog: PathBuf, tokens: TokenSet, namespace: impl Into<String>) -> Self {
        ApiConfig {
            catalog,
            tokens,
            namespace: namespace.into(),
            max_proxies: None,
            template: PodTemplate::new(DEFAULT_PROXY_IMAGE, DEFAULT_PROXY_PORT),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// A serving API instance; dropping it stops it at once (like a crash).
#[derive(Debug)]
pub struct RunningApi {
    /// The address it listens on.
    pub addr: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningApi {
    /// Base URL, `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the instance stops (it stops only when cancelled or on error).
    pub async fn wait(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Loads the catalog and builds the handlers' state. `client` `None` serves
/// the catalog only.
pub async fn build_state(
    config: &ApiConfig,
    client: Option<kube::Client>,
) -> Result<AppState, ApiError> {
    let path = config.catalog.clone();
    let catalog = tokio::task::spawn_blocking(move || vpno_catalog::Catalog::load(&path))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let proxies = client.map(|client| {
        ProxyStore::new(
            client,
            config.namespace.clone(),
            config.max_proxies,
            config.template.clone(),
        )
    });
    Ok(AppState {
        catalog: CatalogHandle::new(config.catalog.clone(), catalog),
        proxies,
        tokens: config.tokens.clone(),
        metrics: metrics::ApiMetrics::default(),
    })
}

/// Starts an API instance on `listener`: the HTTP server and, with a
/// Kubernetes client, the watcher that creates proxy Pods.
pub async fn start(
    config: ApiConfig,
    client: Option<kube::Client>,
    listener: tokio::net::TcpListener,
) -> Result<RunningApi, ApiError> {
    if config.tokens.is_empty() {
        return Err(ApiError::NoTokens);
    }
    let addr = listener.local_addr().map_err(|source| ApiError::Serve {
        addr: "listener".into(),
        source,
    })?;
    let state = build_state(&config, client).await?;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    if let Some(store) = state.proxies.clone() {
        tasks.push(tokio::spawn(
            store.run_workload_watcher(cancel.child_token()),
        ));
    }
    let app = router(state, config.body_limit);
    let shutdown = cancel.child_token();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    tracing::info!(%addr, namespace = %config.namespace, max_proxies = ?config.max_proxies, tokens = config.tokens.len(), "API listening");
    Ok(RunningApi {
        addr,
        cancel,
        tasks,
    })
}

async fn kube_client(args: &ApiArgs) -> Result<kube::Client, ApiError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ApiError::KubeConfig(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| ApiError::KubeConfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ApiError::KubeConfig(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ApiError::KubeConfig(e.to_string()))
}

/// Reads the accepted bearer tokens from a file (one per line) and/or the
/// values of a Secret in `namespace`. Empty when neither is given.
pub async fn load_tokens(
    file: Option<&std::path::Path>,
    secret: Option<&str>,
    client: Option<&kube::Client>,
    namespace: &str,
) -> Result<TokenSet, ApiError> {
    let mut tokens = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ApiError::Tokens {
            path: path.to_owned(),
            source,
        })?;
        tokens.extend(TokenSet::parse_lines(&text));
    }
    if let Some(name) = secret {
        let Some(client) = client else {
            return Err(ApiError::KubeConfig(
                "--tokens-secret needs Kubernetes (not --catalog-only)".into(),
            ));
        };
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), namespace);
        let secret = secrets
            .get_opt(name)
            .await?
            .ok_or_else(|| ApiError::TokenSecretNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        tokens.extend(TokenSet::from_secret_data(&secret.data.unwrap_or_default()));
    }
    Ok(TokenSet::new(tokens))
}

/// Runs `vpn-operator api` until Ctrl-C / SIGTERM.
pub async fn run(args: ApiArgs) -> Result<(), ApiError> {
    let client = if args.catalog_only {
        None
    } else {
        Some(kube_client(&args).await?)
    };
    let namespace = args
        .namespace
        .clone()
        .or_else(|| client.as_ref().map(|c| c.default_namespace().to_owned()))
        .unwrap_or_else(|| "default".into());
    let tokens = load_tokens(
        args.tokens.as_deref(),
        args.tokens_secret.as_deref(),
        client.as_ref(),
        &namespace,
    )
    .await?;
    let config = ApiConfig {
        catalog: args.catalog.clone(),
        tokens,
        namespace,
        max_proxies: args.max_proxies,
        template: PodTemplate {
            image_pull_policy: args.proxy_image_pull_policy,
            ..PodTemplate::new(args.proxy_image.clone(), args.proxy_port)
        },
        body_limit: args.body_limit,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ApiError::Serve {
            addr: args.listen.to_string(),
            source,
        })?;
    let running = start(config, client, listener).await?;
    vpno_sys::shutdown_signal().await;
    tracing::info!("shutting down");
    drop(running);
    Ok(())
}
