//! Where the router learns its gateways: a static list (`--gateway`), the
//! gateway Pods of a MaskGateway (`--discover`, list+watch), or a caller's
//! channel (the lab and tests). Every source yields whole gateway sets; the
//! router diffs them against what it has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::warn;
use vpno_api::names::{
    GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION, ROLE_GATEWAY,
};
use vpno_net::egress::{EgressConfig, Gateway};

/// Why a gateway source stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewaySourceError {
    /// The source has nothing more to say (a closed channel, an ended watch).
    #[error("the gateway source ended")]
    Ended,
    /// Listing or watching failed; the source retries (with backoff) on the next call.
    #[error("watching gateway Pods: {0}")]
    Watch(String),
}

/// A source of gateway sets.
pub trait GatewaySource: Send + 'static {
    /// Waits for the next gateway set (the first call returns the initial
    /// one). A source with nothing new simply never returns. After
    /// [`GatewaySourceError::Watch`] the caller may call again; after
    /// [`GatewaySourceError::Ended`] it should not.
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Vec<Gateway>, GatewaySourceError>> + Send;
}

/// The `--gateway` list: given once, never changes.
#[derive(Debug)]
pub struct StaticGateways(Option<Vec<Gateway>>);

impl StaticGateways {
    /// A source that yields `gateways` once.
    pub fn new(gateways: Vec<Gateway>) -> Self {
        Self(Some(gateways))
    }
}

impl GatewaySource for StaticGateways {
    async fn next(&mut self) -> Result<Vec<Gateway>, GatewaySourceError> {
        match self.0.take() {
            Some(g) => Ok(g),
            None => std::future::pending().await,
        }
    }
}

/// Gateway sets sent by the caller (the lab, tests): each message is the new set.
#[derive(Debug)]
pub struct ChannelGateways(pub tokio::sync::mpsc::Receiver<Vec<Gateway>>);

impl GatewaySource for ChannelGateways {
    async fn next(&mut self) -> Result<Vec<Gateway>, GatewaySourceError> {
        self.0.recv().await.ok_or(GatewaySourceError::Ended)
    }
}

/// The label selector of a MaskGateway's gateway Pods.
pub fn gateway_pod_selector(mask_gateway: &str) -> String {
    format!("{GATEWAY_LABEL}={mask_gateway},{GATEWAY_ROLE_LABEL}={ROLE_GATEWAY}")
}

/// A Pod as a gateway: its name and the address of its
/// `vpn.beebs.dev/network-address` annotation (`IP` or `IP/prefix`). Pods
/// being deleted, finished, or without a valid annotation are not gateways.
pub fn gateway_of_pod(pod: &Pod) -> Option<Gateway> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let raw = meta.annotations.as_ref()?.get(NETWORK_ADDRESS_ANNOTATION)?;
    let ip = raw.split_once('/').map_or(raw.as_str(), |(ip, _)| ip);
    let Ok(address) = ip.trim().parse::<Ipv4Addr>() else {
        warn!(pod = ?meta.name, annotation = %raw, "gateway Pod with an unusable {NETWORK_ADDRESS_ANNOTATION} annotation ignored");
        return None;
    };
    Some(Gateway {
        name: meta.name.clone()?,
        address,
    })
}

/// Makes a set the planner can use: sorted by name, and without a second
/// gateway of an already used name, address or nexthop id (the first by name
/// wins; the others are returned as warnings).
pub fn normalize(config: &EgressConfig, mut gateways: Vec<Gateway>) -> (Vec<Gateway>, Vec<String>) {
    gateways.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    let mut names = BTreeSet::new();
    let mut ids: BTreeMap<u32, Ipv4Addr> = BTreeMap::new();
    let mut warnings = Vec::new();
    gateways.retain(|g| {
        let id = config.nexthop_id_of(g.address);
        if !names.insert(g.name.clone()) {
            warnings.push(format!(
                "gateway name {:?} given twice; the one at {} is ignored",
                g.name, g.address
            ));
            return false;
        }
        match ids.get(&id) {
            Some(other) if *other == g.address => warnings.push(format!(
                "gateway address {} given twice; {} is ignored",
                g.address, g.name
            )),
            Some(other) => warnings.push(format!(
                "gateway {} ({}) shares the low 16 bits of its address (nexthop id {id}) with {other}; ignored",
                g.name, g.address
            )),
            None => {
                ids.insert(id, g.address);
                return true;
            }
        }
        false
    });
    (gateways, warnings)
}

/// The gateway Pods of one MaskGateway, through a list+watch (with backoff)
/// into a store.
pub struct KubernetesGateways {
    store: Store<Pod>,
    events: BoxStream<'static, Result<Event<Pod>, watcher::Error>>,
}

impl KubernetesGateways {
    /// Watches the gateway Pods of MaskGateway `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().labels(&gateway_pod_selector(name));
        let events = reflector::reflector(
            writer,
            watcher::watcher(Api::<Pod>::namespaced(client, namespace), config),
        )
        .default_backoff()
        .boxed();
        Self { store, events }
    }
}

impl GatewaySource for KubernetesGateways {
    async fn next(&mut self) -> Result<Vec<Gateway>, GatewaySourceError> {
        loop {
            match self.events.next().await {
                None => return Err(GatewaySourceError::Ended),
                Some(Err(e)) => return Err(GatewaySourceError::Watch(e.to_string())),
                // Mid-relist events: wait for the list to complete.
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) => {
                    return Ok(self
                        .store
                        .state()
                        .iter()
                        .filter_map(|p| gateway_of_pod(p))
                        .collect());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, address: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        if let Some(a) = address {
            p.metadata.annotations =
                Some([(NETWORK_ADDRESS_ANNOTATION.to_string(), a.to_string())].into());
        }
        p
    }

    fn config() -> EgressConfig {
        EgressConfig {
            gateways: vec![],
            interface: "eth0".into(),
            client_subnet: "10.0.0.0/16".parse().unwrap(),
            vip: "10.0.0.1/16".parse().unwrap(),
            vip_interface: "vpno-vip".into(),
            vip_mac: [2, 0, 0, 0, 0, 1],
            table: 7700,
            rule_priority: 7700,
            nexthop_id_base: 7700,
            buckets: 128,
            idle_timer_secs: 30,
        }
    }

    #[test]
    fn selector_names_the_mask_gateway_and_the_gateway_role() {
        assert_eq!(
            gateway_pod_selector("egress"),
            "vpn.beebs.dev/mask-gateway=egress,vpn.beebs.dev/role=gateway"
        );
    }

    #[test]
    fn pods_become_gateways_by_their_annotation() {
        let g = gateway_of_pod(&pod("egress-0", Some("192.168.24.16/22"))).unwrap();
        assert_eq!(g.name, "egress-0");
        assert_eq!(g.address, Ipv4Addr::new(192, 168, 24, 16));
        assert_eq!(
            gateway_of_pod(&pod("p", Some("192.168.24.17")))
                .unwrap()
                .address,
            Ipv4Addr::new(192, 168, 24, 17)
        );
        assert!(gateway_of_pod(&pod("p", None)).is_none());
        assert!(gateway_of_pod(&pod("p", Some("not-an-ip/22"))).is_none());
        let mut deleting = pod("p", Some("192.168.24.16/22"));
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(gateway_of_pod(&deleting).is_none());
        let mut failed = pod("p", Some("192.168.24.16/22"));
        failed.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(gateway_of_pod(&failed).is_none());
    }

    #[test]
    fn normalize_sorts_and_drops_duplicates() {
        let g = |n: &str, a: [u8; 4]| Gateway {
            name: n.into(),
            address: Ipv4Addr::from(a),
        };
        let (set, warnings) = normalize(
            &config(),
            vec![
                g("b", [10, 0, 0, 12]),
                g("a", [10, 0, 0, 11]),
                g("a", [10, 0, 0, 13]),
                g("c", [10, 0, 0, 11]),
                // same low 16 bits as a: same nexthop id
                g("d", [10, 1, 0, 11]),
            ],
        );
        assert_eq!(set, vec![g("a", [10, 0, 0, 11]), g("b", [10, 0, 0, 12])]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
    }

    #[tokio::test]
    async fn static_source_yields_once_then_waits() {
        let mut s = StaticGateways::new(vec![]);
        assert!(s.next().await.unwrap().is_empty());
        let second = tokio::time::timeout(std::time::Duration::from_millis(20), s.next()).await;
        assert!(second.is_err(), "a static list never changes");
    }
}
