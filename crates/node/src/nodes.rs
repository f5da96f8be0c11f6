//! The cluster's nodes as the agent sees them: [`NodeSource`] hands out the
//! whole node list each time it changes; [`NodeWatch`] is the real one (a
//! kube list+watch of Node objects into a reflector store).

use std::net::Ipv4Addr;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::warn;

use crate::plan::NodeInfo;

/// Annotation on a Node pinning its slice of the gateway network (read,
/// never written, by the agent: whoever allocates slices for the cluster
/// sets it; without it every agent computes the same allocation from the
/// node names).
pub const SLICE_ANNOTATION: &str = "vpn-operator.io/gateway-slice";

/// Why the node list is not available.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// The watch ended (the client shut down).
    #[error("the Node watch ended")]
    Ended,
}

/// Narrow source of node lists, so tests can feed them.
#[allow(async_fn_in_trait)]
pub trait NodeSource {
    /// The next complete node list (after the first list, after each change).
    async fn next(&mut self) -> Result<Vec<NodeInfo>, NodesError>;
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
    let slice = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SLICE_ANNOTATION))
        .and_then(|s| s.parse().ok());
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        address,
        slice,
    }
}

/// Node objects through a default list+watch (with backoff) into a store.
pub struct NodeWatch {
    store: Store<Node>,
    events: BoxStream<'static, Result<Event<Node>, watcher::Error>>,
}

impl NodeWatch {
    /// Starts watching all Node objects.
    pub fn new(client: Client) -> Self {
        let (store, writer) = reflector::store();
        let events = reflector::reflector(
            writer,
            watcher::watcher(Api::<Node>::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .boxed();
        Self { store, events }
    }
}

impl NodeSource for NodeWatch {
    async fn next(&mut self) -> Result<Vec<NodeInfo>, NodesError> {
        loop {
            match self.events.next().await {
                None => return Err(NodesError::Ended),
                Some(Err(e)) => warn!(error = %e, "watching Node objects (retrying)"),
                // Mid-relist events: wait for the list to complete.
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) => {
                    let mut nodes: Vec<NodeInfo> =
                        self.store.state().iter().map(|n| node_info(n)).collect();
                    nodes.sort_by(|a, b| a.name.cmp(&b.name));
                    return Ok(nodes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(addrs: &[(&str, &str)], slice: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        if let Some(s) = slice {
            n.metadata.annotations = Some([(SLICE_ANNOTATION.to_string(), s.to_string())].into());
        }
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
            &[
                ("Hostname", "n1"),
                ("InternalIP", "fd00::1"),
                ("ExternalIP", "203.0.113.9"),
                ("InternalIP", "192.0.2.7"),
            ],
            Some("192.168.24.128/26"),
        );
        let info = node_info(&n);
        assert_eq!(info.name, "n1");
        assert_eq!(info.address, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(info.slice, Some("192.168.24.128/26".parse().unwrap()));
    }

    #[test]
    fn no_internal_ip_and_a_bad_annotation_read_as_absent() {
        let info = node_info(&node(&[("ExternalIP", "203.0.113.9")], Some("nonsense")));
        assert_eq!((info.address, info.slice), (None, None));
    }
}
