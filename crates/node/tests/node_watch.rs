//! The agent's cluster watch against a real API server (crates/testenv's
//! plain control plane, no kubelet): Node objects and MaskGateways — whose
//! status the test writes, as the controller would — created, changed and
//! deleted show up in the pictures `ClusterWatch` hands out, and the agent's
//! pure planning turns them into this node's gateway networks.

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vpno_api::gateway::MaskGateway;
use vpno_node::{Cluster, ClusterSource, ClusterWatch, gateways};
use vpno_testenv::{TestEnv, unique_name};

fn node(name: &str, ip: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.status = Some(NodeStatus {
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        }]),
        ..Default::default()
    });
    n
}

/// Next pictures until `done` holds for the test's own objects (bounded count).
async fn until(watch: &mut ClusterWatch, prefix: &str, done: impl Fn(&Cluster) -> bool) -> Cluster {
    for _ in 0..30 {
        let mut c = watch.next().await.expect("cluster picture");
        c.nodes.retain(|n| n.name.starts_with(prefix));
        c.gateways.retain(|g| g.name.starts_with(prefix));
        if done(&c) {
            return c;
        }
    }
    panic!("the watch never showed the expected objects");
}

#[tokio::test]
async fn the_watch_follows_nodes_and_mask_gateways() {
    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let ns = env.new_namespace("vpno-node").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let gws: Api<MaskGateway> = Api::namespaced(client.clone(), &ns);
    let prefix = unique_name("vpno-node");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut watch = ClusterWatch::new(client);
    nodes
        .create(&PostParams::default(), &node(&a, "192.0.2.1"))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node(&b, "192.0.2.2"))
        .await
        .unwrap();
    let gw_name = format!("{prefix}-gw");
    let gw: MaskGateway = serde_json::from_value(json!({
        "apiVersion": "vpn.beebs.dev/v1", "kind": "MaskGateway",
        "metadata": {"name": gw_name},
        "spec": {"replicas": 2, "clients": {"podSelector": {"matchLabels": {"app": "web"}}}}
    }))
    .unwrap();
    let created = gws.create(&PostParams::default(), &gw).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    // Not planned yet: known, but this node waits.
    let c = until(&mut watch, &prefix, |c| {
        c.nodes.len() == 2 && c.gateways.len() == 1
    })
    .await;
    assert_eq!(c.nodes[0].address, Some("192.0.2.1".parse().unwrap()));
    assert!(c.uids.contains(&uid));
    let (served, waiting) = gateways::serve(&a, 4789, &c.gateways);
    assert!(served.is_empty());
    assert!(waiting[0].1.contains("status.network"), "{waiting:?}");

    // The controller's status: network and both nodes' slices.
    let status = json!({"status": {
        "network": {"cidr": "192.168.24.0/22", "vip": "192.168.24.1", "mtu": 1400,
                    "excludes": ["10.244.0.0/16", "10.96.0.0/12"]},
        "nodes": [{"node": a, "slice": "192.168.24.64/26"}, {"node": b, "slice": "192.168.24.128/26"}]
    }});
    gws.patch_status(&gw_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let c = until(&mut watch, &prefix, |c| {
        c.gateways.first().is_some_and(|g| g.network.is_some())
    })
    .await;
    let info = &c.gateways[0];
    assert_eq!(info.uid, uid);
    assert_eq!(info.slices[&b], "192.168.24.128/26".parse().unwrap());
    assert!(info.clients.as_ref().unwrap().pod_selector.is_some());
    let (served, _) = gateways::serve(&b, 4789, &c.gateways);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].spec.bridge, gateways::bridge_name(&uid));
    assert_eq!(served[0].spec.slice, "192.168.24.128/26".parse().unwrap());
    assert_eq!(served[0].spec.tunnel_mtu, Some(1400));
    assert_eq!(served[0].network.excludes.len(), 2);

    // Gone: the uid leaves the picture (the agent then removes its links).
    gws.delete(&gw_name, &DeleteParams::default())
        .await
        .unwrap();
    nodes.delete(&a, &DeleteParams::default()).await.unwrap();
    let c = until(&mut watch, &prefix, |c| {
        c.gateways.is_empty() && c.nodes.len() == 1
    })
    .await;
    assert!(!c.uids.contains(&uid));
    assert_eq!(c.nodes[0].name, b);
    nodes.delete(&b, &DeleteParams::default()).await.unwrap();
}
