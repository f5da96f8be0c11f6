//! Proxies as data: the request, the objects that represent a proxy in the
//! API server, and the state a client sees — all pure functions, so they are
//! unit-tested without a cluster. [`crate::store`] does the I/O.
//!
//! One proxy `<id>` is:
//! * Secret `<id>` — the record: labels, the request (annotation) and the
//!   generated proxy credentials. Not owned by anything: it outlives an
//!   externally deleted Mask so that the proxy can say what happened.
//! * Lease `vpno-proxy-slot-<k>` (only with `--max-proxies`) — one of N slot
//!   locks, owned by the record; creating it is how an instance is counted.
//! * Mask `<id>` — asks the controller for a VPN slot; owned by the record.
//! * Pod and Service `<id>` — gluetun with its HTTP proxy, created once the
//!   MaskConsumer `<id>` is Active and owned by it, so the VPN slot is freed
//!   only after they are gone.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, Pod, PodSpec,
    SecretEnvSource, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vpno_api::{Mask, MaskConsumer, MaskPhase, MaskSpec};
use vpno_catalog::{Catalog, ServerFilter, TextField};

use crate::error::HttpError;
use crate::openapi::{City, Country, Hostname, ProviderName, Region, VpnProtocol};

/// Label every object of a proxy carries: its id.
pub const PROXY_LABEL: &str = "vpn.beebs.dev/proxy";
/// Label marking objects this API manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "vpn-operator-api";
/// Annotation on the record holding the request as JSON.
pub const REQUEST_ANNOTATION: &str = "vpn.beebs.dev/proxy-request";
/// Annotation on the record naming the slot Lease it holds.
pub const SLOT_ANNOTATION: &str = "vpn.beebs.dev/proxy-slot";
/// Record Secret keys of the proxy credentials.
pub const USERNAME_KEY: &str = "username";
/// Record Secret key of the proxy password.
pub const PASSWORD_KEY: &str = "password";
/// Prefix of proxy ids.
pub const ID_PREFIX: &str = "px-";
/// Prefix of slot Lease names.
pub const SLOT_PREFIX: &str = "vpno-proxy-slot-";
/// Container name of the gluetun container.
pub const CONTAINER_NAME: &str = "gluetun";

/// Most values of one field of a request (beyond the body limit).
pub const MAX_VALUES_PER_FIELD: usize = 32;
/// Longest value of a request, in characters.
pub const MAX_VALUE_LEN: usize = 253;

/// Body of `POST /proxies`: where the proxy should exit. The values each
/// catalog field accepts are the `enum` of its schema in the served document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProxyRequest {
    /// gluetun provider name (e.g. `mullvad`). Filters are checked against
    /// this provider's servers, gluetun gets `VPN_SERVICE_PROVIDER`, and —
    /// unless `providers` is given — it is the Mask's provider tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ProviderName>)]
    pub provider: Option<String>,
    /// MaskProvider tags the slot may come from (any one matches). Absent:
    /// `[provider]` when a provider is named, else any MaskProvider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<ProviderTag>, max_items = 32)]
    pub providers: Vec<String>,
    /// Countries to exit in (any one; `SERVER_COUNTRIES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Country>, max_items = 32)]
    pub country: Vec<String>,
    /// Regions (`SERVER_REGIONS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Region>, max_items = 32)]
    pub region: Vec<String>,
    /// Cities (`SERVER_CITIES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<City>, max_items = 32)]
    pub city: Vec<String>,
    /// Server hostnames (`SERVER_HOSTNAMES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Hostname>, max_items = 32)]
    pub hostname: Vec<String>,
    /// `wireguard` or `openvpn` (`VPN_TYPE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<VpnProtocol>)]
    pub vpn: Option<String>,
}

/// A MaskProvider tag: 1 to 253 characters, not only white space.
#[derive(Debug)]
pub struct ProviderTag;

impl utoipa::PartialSchema for ProviderTag {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::text_schema(
            "A MaskProvider tag (`spec.tags`)",
            Some(MAX_VALUE_LEN),
            true,
        )
    }
}

impl ToSchema for ProviderTag {}

impl CreateProxyRequest {
    /// The Mask's `spec.providers`.
    pub fn mask_tags(&self) -> Option<Vec<String>> {
        if !self.providers.is_empty() {
            Some(self.providers.clone())
        } else {
            self.provider.as_ref().map(|p| vec![p.clone()])
        }
    }

    fn text_filters(&self) -> [(TextField, &Vec<String>); 4] {
        [
            (TextField::Country, &self.country),
            (TextField::Region, &self.region),
            (TextField::City, &self.city),
            (TextField::Hostname, &self.hostname),
        ]
    }

    /// Checks the request against the catalog and returns how many servers
    /// it allows. Unknown values, impossible combinations and oversize input
    /// are 400s.
    pub fn validate(&self, catalog: &Catalog) -> Result<usize, HttpError> {
        let lists: [(&str, &Vec<String>); 5] = [
            ("providers", &self.providers),
            ("country", &self.country),
            ("region", &self.region),
            ("city", &self.city),
            ("hostname", &self.hostname),
        ];
        for (name, values) in lists {
            if values.len() > MAX_VALUES_PER_FIELD {
                return Err(HttpError::bad_request(format!(
                    "{name}: at most {MAX_VALUES_PER_FIELD} values"
                )));
            }
            if let Some(v) = values
                .iter()
                .find(|v| v.trim().is_empty() || v.chars().count() > MAX_VALUE_LEN)
            {
                return Err(HttpError::bad_request(format!(
                    "{name}: values must be 1 to {MAX_VALUE_LEN} characters, got {v:?}"
                )));
            }
        }
        if let Some(vpn) = &self.vpn
            && !matches!(vpn.as_str(), "wireguard" | "openvpn")
        {
            return Err(HttpError::bad_request(format!(
                "vpn must be wireguard or openvpn, not {vpn:?}"
            )));
        }
        let mut base = ServerFilter::default();
        if let Some(provider) = &self.provider {
            if provider.trim().is_empty() {
                return Err(HttpError::bad_request("provider must not be empty"));
            }
            base = base.with(TextField::Provider, provider.clone());
            catalog.count(&base).map_err(HttpError::unknown_value)?;
        }
        if let Some(vpn) = &self.vpn {
            base = base.with(TextField::Vpn, vpn.clone());
        }
        let mut all = base.clone();
        for (field, values) in self.text_filters() {
            for value in values {
                let single = base.clone().with(field, value.clone());
                let n = catalog.count(&single).map_err(HttpError::unknown_value)?;
                if n == 0 {
                    return Err(HttpError::new(
                        axum::http::StatusCode::CONFLICT,
                        "no_matching_server",
                        format!(
                            "no {} server has {field} {value:?}",
                            self.provider.as_deref().unwrap_or("known")
                        ),
                    ));
                }
                all = all.with(field, value.clone());
            }
        }
        let n = catalog.count(&all).map_err(HttpError::unknown_value)?;
        if n == 0 {
            return Err(HttpError::new(
                axum::http::StatusCode::CONFLICT,
                "no_matching_server",
                "no server matches all the given filters together",
            ));
        }
        Ok(n)
    }

    /// gluetun environment variables selecting servers.
    pub fn gluetun_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(provider) = &self.provider {
            env.push(("VPN_SERVICE_PROVIDER".into(), provider.clone()));
        }
        if let Some(vpn) = &self.vpn {
            env.push(("VPN_TYPE".into(), vpn.clone()));
        }
        for (name, values) in [
            ("SERVER_COUNTRIES", &self.country),
            ("SERVER_REGIONS", &self.region),
            ("SERVER_CITIES", &self.city),
            ("SERVER_HOSTNAMES", &self.hostname),
        ] {
            if !values.is_empty() {
                env.push((name.into(), values.join(",")));
            }
        }
        env
    }
}

/// Where a proxy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyState {
    /// Waiting for a VPN slot (the Mask is Pending or Waiting).
    Pending,
    /// Slot held; the proxy Pod is being created or is not running yet.
    Starting,
    /// The proxy Pod runs; the endpoint accepts connections.
    Ready,
    /// Cannot work: the Mask was deleted, no provider is eligible, or the Pod failed.
    Failed,
    /// Being deleted.
    Deleting,
}

/// Generated credentials of the HTTP proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProxyCredentials {
    /// `HTTPPROXY_USER`.
    pub username: String,
    /// `HTTPPROXY_PASSWORD`.
    pub password: String,
}

impl ProxyCredentials {
    /// Fresh random credentials.
    pub fn generate() -> Self {
        ProxyCredentials {
            username: format!("u{}", random_token(11)),
            password: random_token(32),
        }
    }
}

/// A proxy as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Proxy {
    /// Proxy id (also the name of its Mask, Pod and Service).
    pub id: String,
    /// Current state.
    pub state: ProxyState,
    /// Why the proxy is in this state (e.g. the Mask's message while pending).
    pub message: String,
    /// `host:port` of the HTTP proxy inside the cluster.
    pub endpoint: String,
    /// Proxy credentials (omitted in listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<ProxyCredentials>,
    /// What was asked for.
    pub request: CreateProxyRequest,
    /// The Mask's phase, when the Mask exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_phase: Option<String>,
    /// The MaskProvider the slot came from, once assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_provider: Option<String>,
    /// The proxy Pod's IP, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// When the proxy was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// All proxies.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyList {
    /// Number of proxies.
    pub total: usize,
    /// The proxies, oldest first, without credentials.
    pub proxies: Vec<Proxy>,
}

/// Random lower-case alphanumeric string.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A fresh proxy id (a valid DNS-1035 label).
pub fn new_id() -> String {
    format!("{ID_PREFIX}{}", random_token(10))
}

/// Whether `id` could be a proxy id (keeps junk out of API-server paths).
pub fn is_valid_id(id: &str) -> bool {
    id.len() <= 63
        && id.starts_with(ID_PREFIX)
        && id.len() > ID_PREFIX.len()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.ends_with('-')
}

/// Name of slot Lease `k`.
pub fn slot_name(k: u32) -> String {
    format!("{SLOT_PREFIX}{k}")
}

/// Labels of every object of proxy `id`.
pub fn labels(id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (PROXY_LABEL.to_owned(), id.to_owned()),
    ])
}

/// Label selector matching every proxy object of this API.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{PROXY_LABEL}")
}

/// The record Secret of a new proxy.
pub fn record_secret(
    id: &str,
    namespace: &str,
    request: &CreateProxyRequest,
    creds: &ProxyCredentials,
) -> Secret {
    let request_json = serde_json::to_string(request).unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(id.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(id)),
            annotations: Some(BTreeMap::from([(
                REQUEST_ANNOTATION.to_owned(),
                request_json,
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (USERNAME_KEY.to_owned(), creds.username.clone()),
            (PASSWORD_KEY.to_owned(), creds.password.clone()),
        ])),
        ..Default::default()
    }
}

/// Owner reference to `owner` (which must have been read from the API server).
pub fn owner_ref<K: kube::Resource<DynamicType = ()>>(
    owner: &K,
    controller: bool,
) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(controller),
        block_owner_deletion: Some(true),
    })
}

/// Slot Lease `k` held by proxy `id`, owned by its record.
pub fn slot_lease(k: u32, id: &str, record: &Secret) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(slot_name(k)),
            labels: Some(labels(id)),
            owner_references: owner_ref(record, false).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(id.to_owned()),
            ..Default::default()
        }),
    }
}

/// The Mask of proxy `id`, owned by its record.
pub fn proxy_mask(id: &str, request: &CreateProxyRequest, record: &Secret) -> Mask {
    let mut mask = Mask::new(
        id,
        MaskSpec {
            providers: request.mask_tags(),
        },
    );
    mask.metadata.labels = Some(labels(id));
    mask.metadata.owner_references = owner_ref(record, false).map(|o| vec![o]);
    mask
}

/// How the proxy Pod is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTemplate {
    /// gluetun image.
    pub image: String,
    /// HTTP proxy port.
    pub port: u16,
    /// The container's `imagePullPolicy`; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<ImagePullPolicy>,
}

impl PodTemplate {
    /// `image` on `port`, with Kubernetes' default pull policy.
    pub fn new(image: impl Into<String>, port: u16) -> Self {
        PodTemplate {
            image: image.into(),
            port,
            image_pull_policy: None,
        }
    }
}

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    #[value(name = "Always")]
    Always,
    /// Pull only when the node lacks the image.
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Never pull: the image must already be on the node.
    #[value(name = "Never")]
    Never,
}

impl ImagePullPolicy {
    /// The value as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The gluetun Pod of proxy `id`, owned by its MaskConsumer; `None` until the
/// consumer has an assignment.
pub fn proxy_pod(
    id: &str,
    request: &CreateProxyRequest,
    consumer: &MaskConsumer,
    template: &PodTemplate,
) -> Option<Pod> {
    let assignment = consumer.assignment()?;
    let secret_ref = |key: &str| EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: id.to_owned(),
            key: key.to_owned(),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: "HTTPPROXY".into(),
            value: Some("on".into()),
            ..Default::default()
        },
        EnvVar {
            name: "HTTPPROXY_LISTENING_ADDRESS".into(),
            value: Some(format!(":{}", template.port)),
            ..Default::default()
        },
        // gluetun's firewall drops inbound traffic except on listed ports.
        EnvVar {
            name: "FIREWALL_INPUT_PORTS".into(),
            value: Some(template.port.to_string()),
            ..Default::default()
        },
        EnvVar {
            name: "HTTPPROXY_USER".into(),
            value_from: Some(secret_ref(USERNAME_KEY)),
            ..Default::default()
        },
        EnvVar {
            name: "HTTPPROXY_PASSWORD".into(),
            value_from: Some(secret_ref(PASSWORD_KEY)),
            ..Default::default()
        },
    ];
    env.extend(
        request
            .gluetun_env()
            .into_iter()
            .map(|(name, value)| EnvVar {
                name,
                value: Some(value),
                ..Default::default()
            }),
    );
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(template.image.clone()),
        image_pull_policy: template.image_pull_policy.map(|p| p.as_str().to_owned()),
        // gluetun logs why it exits; the kubelet then quotes the log tail in
        // the container status, which the API shows in `message`.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: assignment.secret.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("http-proxy".into()),
            container_port: i32::from(template.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(id.to_owned()),
            namespace: consumer.meta().namespace.clone(),
            labels: Some(labels(id)),
            owner_references: owner_ref(consumer, true).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Always".into()),
            ..Default::default()
        }),
        status: None,
    })
}

/// Name of the credentials Secret a proxy Pod takes its VPN settings from.
pub fn pod_credentials_secret(pod: &Pod) -> Option<&str> {
    let container = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?;
    container
        .env_from
        .as_ref()?
        .iter()
        .find_map(|e| e.secret_ref.as_ref())
        .map(|s| s.name.as_str())
}

/// The Service in front of the proxy Pod, owned by the MaskConsumer.
pub fn proxy_service(id: &str, consumer: &MaskConsumer, template: &PodTemplate) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(id.to_owned()),
            namespace: consumer.meta().namespace.clone(),
            labels: Some(labels(id)),
            owner_references: owner_ref(consumer, true).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(PROXY_LABEL.to_owned(), id.to_owned())])),
            ports: Some(vec![ServicePort {
                name: Some("http-proxy".into()),
                port: i32::from(template.port),
                target_port: Some(IntOrString::Int(i32::from(template.port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Everything the API server holds about one proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyObjects {
    /// The record Secret (always present for a listed proxy).
    pub record: Secret,
    /// The Mask, unless deleted.
    pub mask: Option<Mask>,
    /// The MaskConsumer, once the controller made it.
    pub consumer: Option<MaskConsumer>,
    /// The proxy Pod, once created.
    pub pod: Option<Pod>,
}

fn mask_phase_name(phase: MaskPhase) -> &'static str {
    match phase {
        MaskPhase::Pending => "Pending",
        MaskPhase::Waiting => "Waiting",
        MaskPhase::Active => "Active",
        MaskPhase::Terminating => "Terminating",
        MaskPhase::ErrNoProviders => "ErrNoProviders",
    }
}

/// The state a client sees at `now`, and why.
pub fn derive_state(objects: &ProxyObjects, now: Timestamp) -> (ProxyState, String) {
    let id = objects.record.metadata.name.as_deref().unwrap_or_default();
    if objects.record.metadata.deletion_timestamp.is_some() {
        return (ProxyState::Deleting, "the proxy is being deleted".into());
    }
    let Some(mask) = &objects.mask else {
        return (
            ProxyState::Failed,
            format!("the Mask {id} was deleted outside this API; DELETE the proxy to release it"),
        );
    };
    let mask_message = mask
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    let with_message = |prefix: String| {
        if mask_message.is_empty() {
            prefix
        } else {
            format!("{prefix}: {mask_message}")
        }
    };
    if mask.metadata.deletion_timestamp.is_some() {
        return (
            ProxyState::Failed,
            format!("the Mask {id} is being deleted outside this API"),
        );
    }
    match mask.phase() {
        MaskPhase::Pending => {
            return (
                ProxyState::Pending,
                with_message("the Mask is Pending (not yet processed by the controller)".into()),
            );
        }
        MaskPhase::Waiting => {
            return (
                ProxyState::Pending,
                with_message("the Mask is Waiting for a free VPN slot".into()),
            );
        }
        MaskPhase::ErrNoProviders => {
            return (
                ProxyState::Failed,
                with_message("the Mask has no eligible MaskProvider (ErrNoProviders)".into()),
            );
        }
        MaskPhase::Terminating => {
            return (
                ProxyState::Failed,
                with_message("the Mask is Terminating".into()),
            );
        }
        MaskPhase::Active => {}
    }
    let consumer_ready = objects
        .consumer
        .as_ref()
        .is_some_and(|c| c.phase() == MaskPhase::Active && c.assignment().is_some());
    if !consumer_ready {
        return (
            ProxyState::Starting,
            "VPN slot assigned; waiting for the MaskConsumer to become Active".into(),
        );
    }
    let Some(pod) = &objects.pod else {
        return (
            ProxyState::Starting,
            "VPN slot assigned; creating the proxy Pod".into(),
        );
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return (ProxyState::Failed, "the proxy Pod is being deleted".into());
    }
    crate::pod_status::judge_pod(pod, now)
}

/// Reads the request back from a record.
pub fn request_of(record: &Secret) -> CreateProxyRequest {
    record
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_ANNOTATION))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Reads the credentials back from a record.
pub fn credentials_of(record: &Secret) -> Option<ProxyCredentials> {
    let get = |key: &str| -> Option<String> {
        if let Some(v) = record.data.as_ref().and_then(|d| d.get(key)) {
            return String::from_utf8(v.0.clone()).ok();
        }
        record
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
    };
    Some(ProxyCredentials {
        username: get(USERNAME_KEY)?,
        password: get(PASSWORD_KEY)?,
    })
}

/// The client's view of a proxy at `now`.
pub fn view(
    objects: &ProxyObjects,
    namespace: &str,
    port: u16,
    with_credentials: bool,
    now: Timestamp,
) -> Proxy {
    let id = objects.record.metadata.name.clone().unwrap_or_default();
    let (state, message) = derive_state(objects, now);
    Proxy {
        endpoint: format!("{id}.{namespace}.svc:{port}"),
        state,
        message,
        credentials: if with_credentials {
            credentials_of(&objects.record)
        } else {
            None
        },
        request: request_of(&objects.record),
        mask_phase: objects
            .mask
            .as_ref()
            .map(|m| mask_phase_name(m.phase()).to_owned()),
        assigned_provider: objects
            .consumer
            .as_ref()
            .and_then(|c| c.assignment())
            .map(|a| a.name.clone()),
        pod_ip: objects
            .pod
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.pod_ip.clone()),
        created: objects
            .record
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use vpno_api::{AssignedProvider, MaskConsumerStatus, MaskStatus};

    fn record() -> Secret {
        let mut s = record_secret(
            "px-abc",
            "ns",
            &CreateProxyRequest::default(),
            &ProxyCredentials::generate(),
        );
        s.metadata.uid = Some("rec-uid".into());
        s
    }

    fn mask(phase: MaskPhase, message: &str) -> Mask {
        let mut m = proxy_mask("px-abc", &CreateProxyRequest::default(), &record());
        m.status = Some(MaskStatus {
            phase: Some(phase),
            message: Some(message.into()),
            last_updated: None,
        });
        m
    }

    fn consumer() -> MaskConsumer {
        let mut c = MaskConsumer::new("px-abc", Default::default());
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("cons-uid".into());
        c.status = Some(MaskConsumerStatus {
            phase: Some(MaskPhase::Active),
            provider: Some(AssignedProvider {
                name: "mullvad-1".into(),
                namespace: "ns".into(),
                uid: "prov-uid".into(),
                slot: 0,
                reservation: "r".into(),
                secret: "px-abc-prov-uid".into(),
            }),
            ..Default::default()
        });
        c
    }

    fn pod(phase: &str, ready: Option<&str>) -> Pod {
        let request = CreateProxyRequest::default();
        let mut p = proxy_pod(
            "px-abc",
            &request,
            &consumer(),
            &PodTemplate::new("g", 8888),
        )
        .unwrap();
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some("10.0.0.7".into()),
            conditions: ready.map(|r| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: r.into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn state_follows_mask_consumer_and_pod() {
        let mut o = ProxyObjects {
            record: record(),
            ..Default::default()
        };
        assert_eq!(
            derive_state(&o, Timestamp::now()).0,
            ProxyState::Failed,
            "Mask deleted externally"
        );
        assert!(
            derive_state(&o, Timestamp::now())
                .1
                .contains("deleted outside")
        );
        o.mask = Some(mask(MaskPhase::Waiting, "all 2 providers full: a, b"));
        let (state, why) = derive_state(&o, Timestamp::now());
        assert_eq!(state, ProxyState::Pending);
        assert!(
            why.contains("Waiting") && why.contains("all 2 providers full"),
            "{why}"
        );
        o.mask = Some(mask(MaskPhase::ErrNoProviders, "no provider"));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Failed);
        o.mask = Some(mask(MaskPhase::Active, ""));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Starting);
        o.consumer = Some(consumer());
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Starting);
        o.pod = Some(pod("Pending", None));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Starting);
        o.pod = Some(pod("Running", Some("False")));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Starting);
        o.pod = Some(pod("Running", Some("True")));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Ready);
        o.pod = Some(pod("Running", None));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Ready);
        o.pod = Some(pod("Failed", None));
        assert_eq!(derive_state(&o, Timestamp::now()).0, ProxyState::Failed);
        let v = view(&o, "ns", 8888, false, Timestamp::now());
        assert_eq!(v.endpoint, "px-abc.ns.svc:8888");
        assert_eq!(v.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(v.assigned_provider.as_deref(), Some("mullvad-1"));
        assert!(v.credentials.is_none());
        assert!(
            view(&o, "ns", 8888, true, Timestamp::now())
                .credentials
                .is_some()
        );
    }

    #[test]
    fn pod_uses_consumer_secret_and_filters() {
        let request = CreateProxyRequest {
            provider: Some("mullvad".into()),
            country: vec!["Sweden".into(), "Norway".into()],
            city: vec!["Stockholm".into()],
            hostname: vec!["se-sto-wg-001".into()],
            vpn: Some("wireguard".into()),
            ..Default::default()
        };
        let p = proxy_pod(
            "px-abc",
            &request,
            &consumer(),
            &PodTemplate {
                image_pull_policy: Some(ImagePullPolicy::Never),
                ..PodTemplate::new("img", 8888)
            },
        )
        .unwrap();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(env["HTTPPROXY"].value.as_deref(), Some("on"));
        assert_eq!(env["FIREWALL_INPUT_PORTS"].value.as_deref(), Some("8888"));
        assert_eq!(
            env["SERVER_COUNTRIES"].value.as_deref(),
            Some("Sweden,Norway")
        );
        assert_eq!(env["SERVER_CITIES"].value.as_deref(), Some("Stockholm"));
        assert_eq!(
            env["SERVER_HOSTNAMES"].value.as_deref(),
            Some("se-sto-wg-001")
        );
        assert_eq!(
            env["VPN_SERVICE_PROVIDER"].value.as_deref(),
            Some("mullvad")
        );
        assert_eq!(env["VPN_TYPE"].value.as_deref(), Some("wireguard"));
        // Credentials by reference, never inline.
        assert!(env["HTTPPROXY_PASSWORD"].value.is_none());
        assert_eq!(
            env["HTTPPROXY_PASSWORD"]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "px-abc"
        );
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "px-abc-prov-uid"
        );
        assert_eq!(pod_credentials_secret(&p), Some("px-abc-prov-uid"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MaskConsumer", "cons-uid")
        );
        assert_eq!(request.mask_tags(), Some(vec!["mullvad".to_owned()]));
    }

    #[test]
    fn ids_and_credentials() {
        let id = new_id();
        assert!(is_valid_id(&id), "{id}");
        assert!(!is_valid_id("px-"));
        assert!(!is_valid_id("kube-system"));
        assert!(!is_valid_id("px-../x"));
        let a = ProxyCredentials::generate();
        let b = ProxyCredentials::generate();
        assert_ne!(a.password, b.password);
        assert_eq!(a.password.len(), 32);
        let rec = record_secret("px-x", "ns", &CreateProxyRequest::default(), &a);
        assert_eq!(credentials_of(&rec), Some(a));
    }
}
