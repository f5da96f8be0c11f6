//! What the MaskGateway controller decides on: the MaskGateway, its Masks,
//! their consumers and its Pods from the stores; Nodes; and, read through
//! the executor, the key names of the credentials that a new gateway Pod
//! would use and the discovered service range.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use vpno_api::names::GATEWAY_LABEL;
use vpno_api::{Mask, MaskConsumer, MaskGateway, MaskPhase};

use super::agents::{public_ip_url, router_status_url};
use super::network::NodeInfo;
use super::render::PodImages;
use super::render::{GATEWAY_PORT, ROUTER_PORT};
use super::status::{is_gateway_pod, pod_ready, pod_running};
use crate::context::{Ctx, ns_of};
use crate::effect::{CredentialKeys, Executor};
use crate::error::ControllerError;

/// Everything [`super::decide`] looks at.
pub(crate) struct Observed {
    pub gateway: Arc<MaskGateway>,
    /// Masks labelled with the MaskGateway (ownership is checked when deciding).
    pub masks: Vec<Arc<Mask>>,
    /// The MaskConsumers of those Masks (same names).
    pub consumers: Vec<Arc<MaskConsumer>>,
    /// Pods labelled with the MaskGateway (gateways and routers).
    pub pods: Vec<Arc<Pod>>,
    /// The Nodes (`None`: not listed, e.g. no permission).
    pub nodes: Option<Vec<NodeInfo>>,
    /// The service range as the cluster tells it.
    pub service_cidr: Option<String>,
    /// Key names of credentials Secrets (by name) that a gateway Pod to be
    /// created would use.
    pub credentials: BTreeMap<String, CredentialKeys>,
    /// What agents answered, by Pod name: a ready gateway's `/public-ip`,
    /// a running router's `/status`.
    pub agents: BTreeMap<String, String>,
    /// Whether the routers' heartbeat key Secret exists.
    pub router_key_exists: bool,
    pub images: PodImages,
    /// The time of this decision (RFC 3339).
    pub now: String,
}

/// A Node as the planner sees it.
pub(crate) fn node_info(n: &Node) -> NodeInfo {
    let spec = n.spec.as_ref();
    let many = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let pod_cidrs = if many.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        many
    };
    NodeInfo {
        name: n.name_any(),
        pod_cidrs,
    }
}

fn labelled<K: kube::Resource>(obj: &K, ns: &str, name: &str) -> bool {
    obj.meta().namespace.as_deref() == Some(ns)
        && obj
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_LABEL))
            .map(String::as_str)
            == Some(name)
}

/// Reads what `gw`'s decision needs.
pub(crate) async fn observe(
    gw: Arc<MaskGateway>,
    ctx: &Ctx,
    exec: &impl Executor,
) -> Result<Observed, ControllerError> {
    let ns = ns_of(gw.as_ref(), "MaskGateway")?;
    let name = gw.name_any();
    let masks: Vec<Arc<Mask>> = ctx
        .masks
        .state()
        .into_iter()
        .filter(|m| labelled(m.as_ref(), &ns, &name))
        .collect();
    let consumers: Vec<Arc<MaskConsumer>> = masks
        .iter()
        .filter_map(|m| {
            ctx.consumers
                .get(&ObjectRef::new(&m.name_any()).within(&ns))
        })
        .collect();
    let pods: Vec<Arc<Pod>> = ctx
        .gateway_pods
        .state()
        .into_iter()
        .filter(|p| labelled(p.as_ref(), &ns, &name))
        .collect();
    let mut credentials = BTreeMap::new();
    for c in &consumers {
        let Some(a) = c.assignment().filter(|_| c.phase() == MaskPhase::Active) else {
            continue;
        };
        let has_pod = pods.iter().any(|p| {
            is_gateway_pod(p)
                && p.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == c.uid().as_ref())
        });
        if !has_pod
            && !credentials.contains_key(&a.secret)
            && let Some(secret) = exec.fresh::<Secret>(&ns, &a.secret).await?
        {
            credentials.insert(a.secret.clone(), CredentialKeys::of(&secret));
        }
    }
    let agents = ask_agents(&pods, exec).await;
    let secret = router_key_secret(&name);
    let listed = *ctx.nodes_listed.borrow();
    let nodes = listed.then(|| ctx.nodes.state().iter().map(|n| node_info(n)).collect());
    Ok(Observed {
        router_key_exists: ctx.secret(&ns, &secret).is_some(),
        nodes,
        service_cidr: exec.service_cidr().await,
        images: ctx.config.pod_images.clone(),
        now: crate::plan::status::now_rfc3339(),
        gateway: gw,
        masks,
        consumers,
        pods,
        credentials,
        agents,
    })
}

/// Asks each ready gateway for its public IP and each running router for
/// its role, on their Pod IPs.
async fn ask_agents(pods: &[Arc<Pod>], exec: &impl Executor) -> BTreeMap<String, String> {
    let mut names = Vec::new();
    let mut urls = Vec::new();
    for p in pods {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
            continue;
        };
        let url = if is_gateway_pod(p) {
            if !pod_ready(p) {
                continue;
            }
            public_ip_url(ip, GATEWAY_PORT)
        } else if pod_running(p) {
            router_status_url(ip, ROUTER_PORT)
        } else {
            continue;
        };
        names.push(p.name_any());
        urls.push(url);
    }
    if urls.is_empty() {
        return BTreeMap::new();
    }
    let answers = exec.fetch_agents(urls).await;
    names
        .into_iter()
        .zip(answers)
        .filter_map(|(n, a)| Some((n, a?)))
        .collect()
}

fn router_key_secret(gw: &str) -> String {
    super::render::router_key_name(gw)
}
