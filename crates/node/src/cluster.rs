//! The cluster as the agent sees it: [`ClusterSource`] hands out the whole
//! picture (Nodes and MaskGateways) each time it changes; [`ClusterWatch`]
//! is the real one (kube list+watch of both kinds into reflector stores).

use std::net::Ipv4Addr;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::warn;
use vpno_api::gateway::MaskGateway;

use crate::gateways::{GatewayInfo, gateway_info};
use crate::plan::NodeInfo;

/// Why the cluster's state is not available.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A watch ended (the client shut down).
    #[error("the Node/MaskGateway watch ended")]
    Ended,
}

/// What the agent knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// Every Node, by name.
    pub nodes: Vec<NodeInfo>,
    /// Every MaskGateway, by namespace and name.
    pub gateways: Vec<GatewayInfo>,
    /// MaskGateways whose status cannot be used (`namespace/name: why`).
    pub unusable: Vec<String>,
    /// The uid of every MaskGateway, usable or not: the agent keeps their links.
    pub uids: std::collections::BTreeSet<String>,
}

/// Narrow source of cluster pictures, so tests can feed them.
#[allow(async_fn_in_trait)]
pub trait ClusterSource {
    /// The next complete picture (once both lists are in, then after each change).
    async fn next(&mut self) -> Result<Cluster, ClusterError>;
}

/// What the agent reads from a Node object.
pub fn node_info(node: &Node) -> NodeInfo {
    let address = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        address,
    }
}

/// The picture from the stores' contents.
pub fn picture(
    nodes: &[std::sync::Arc<Node>],
    gateways: &[std::sync::Arc<MaskGateway>],
) -> Cluster {
    let mut out = Cluster {
        nodes: nodes.iter().map(|n| node_info(n)).collect(),
        ..Default::default()
    };
    out.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for gw in gateways {
        out.uids.extend(gw.metadata.uid.clone());
        match gateway_info(gw) {
            Ok(info) => out.gateways.push(info),
            Err(why) => out.unusable.push(why),
        }
    }
    out.gateways
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.unusable.sort();
    out
}

/// A watch event reduced to what the agent acts on: whether it completes a
/// (re)list or is a change (the stores hold the objects).
enum Changed {
    Nodes(Result<bool, watcher::Error>),
    Gateways(Result<bool, watcher::Error>),
}

/// Nodes and MaskGateways (all namespaces) through default list+watches
/// (with backoff) into stores.
pub struct ClusterWatch {
    nodes: Store<Node>,
    gateways: Store<MaskGateway>,
    events: BoxStream<'static, Changed>,
    listed: (bool, bool),
}

impl ClusterWatch {
    /// Starts both watches.
    pub fn new(client: Client) -> Self {
        let (nodes, node_writer) = reflector::store();
        let (gateways, gateway_writer) = reflector::store();
        let node_events = reflector::reflector(
            node_writer,
            watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| Changed::Nodes(e.map(|e| completes(&e))));
        let gateway_events = reflector::reflector(
            gateway_writer,
            watcher::watcher(Api::<MaskGateway>::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| Changed::Gateways(e.map(|e| completes(&e))));
        Self {
            nodes,
            gateways,
            events: futures::stream::select(node_events, gateway_events).boxed(),
            listed: (false, false),
        }
    }
}

/// Whether an event completes a (re)list or is a change: mid-relist events wait.
fn completes<K>(event: &Event<K>) -> bool {
    matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_))
}

impl ClusterSource for ClusterWatch {
    async fn next(&mut self) -> Result<Cluster, ClusterError> {
        loop {
            let done = match self.events.next().await {
                None => return Err(ClusterError::Ended),
                Some(Changed::Nodes(Err(e))) => {
                    warn!(error = %e, "watching Node objects (retrying)");
                    false
                }
                Some(Changed::Gateways(Err(e))) => {
                    warn!(error = %e, "watching MaskGateway objects (retrying)");
                    false
                }
                Some(Changed::Nodes(Ok(c))) => {
                    self.listed.0 |= c;
                    c
                }
                Some(Changed::Gateways(Ok(c))) => {
                    self.listed.1 |= c;
                    c
                }
            };
            if done && self.listed == (true, true) {
                return Ok(picture(&self.nodes.state(), &self.gateways.state()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use std::sync::Arc;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    #[test]
    fn the_first_ipv4_internal_ip_is_the_address() {
        let n = node(
            "n1",
            &[
                ("Hostname", "n1"),
                ("InternalIP", "fd00::1"),
                ("ExternalIP", "203.0.113.9"),
                ("InternalIP", "192.0.2.7"),
            ],
        );
        let info = node_info(&n);
        assert_eq!(info.name, "n1");
        assert_eq!(info.address, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            node_info(&node("n2", &[("ExternalIP", "203.0.113.9")])).address,
            None
        );
    }

    #[test]
    fn the_picture_is_sorted_and_names_unusable_gateways() {
        let mut good = MaskGateway::new("b", Default::default());
        good.metadata.namespace = Some("vpn".into());
        good.metadata.uid = Some("u1".into());
        let mut first = good.clone();
        first.metadata.name = Some("a".into());
        let mut no_uid = good.clone();
        no_uid.metadata.uid = None;
        let p = picture(
            &[Arc::new(node("z", &[])), Arc::new(node("m", &[]))],
            &[Arc::new(good), Arc::new(first), Arc::new(no_uid)],
        );
        assert_eq!(
            p.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["m", "z"]
        );
        assert_eq!(
            p.gateways
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(p.unusable.len(), 1);
        assert!(p.unusable[0].contains("no uid"));
    }
}
