//! The agent's Node watch against a real API server (crates/testenv's plain
//! control plane, no kubelet): Node objects created, annotated and deleted
//! show up in the lists `NodeWatch` hands out.

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use vpno_node::{NodeSource, NodeWatch, SLICE_ANNOTATION};
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

/// Next lists until `done` holds for the test's own nodes (bounded count).
async fn until(
    watch: &mut NodeWatch,
    prefix: &str,
    done: impl Fn(&[vpno_node::NodeInfo]) -> bool,
) -> Vec<vpno_node::NodeInfo> {
    for _ in 0..20 {
        let ours: Vec<_> = watch
            .next()
            .await
            .expect("node list")
            .into_iter()
            .filter(|n| n.name.starts_with(prefix))
            .collect();
        if done(&ours) {
            return ours;
        }
    }
    panic!("the watch never showed the expected nodes");
}

#[tokio::test]
async fn the_watch_follows_node_objects() {
    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let api: Api<Node> = Api::all(client.clone());
    let prefix = unique_name("vpno-node");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut watch = NodeWatch::new(client);
    api.create(&PostParams::default(), &node(&a, "192.0.2.1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &node(&b, "192.0.2.2"))
        .await
        .unwrap();

    let both = until(&mut watch, &prefix, |ns| ns.len() == 2).await;
    assert_eq!(both[0].name, a);
    assert_eq!(both[0].address, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(both[1].address, Some("192.0.2.2".parse().unwrap()));

    let pin =
        serde_json::json!({"metadata": {"annotations": {SLICE_ANNOTATION: "192.168.25.0/26"}}});
    api.patch(&b, &PatchParams::default(), &Patch::Merge(&pin))
        .await
        .unwrap();
    let pinned = until(&mut watch, &prefix, |ns| {
        ns.iter().any(|n| n.slice.is_some())
    })
    .await;
    assert_eq!(pinned[1].slice, Some("192.168.25.0/26".parse().unwrap()));

    api.delete(&a, &DeleteParams::default()).await.unwrap();
    let left = until(&mut watch, &prefix, |ns| ns.len() == 1).await;
    assert_eq!(left[0].name, b);
    api.delete(&b, &DeleteParams::default()).await.unwrap();
}
