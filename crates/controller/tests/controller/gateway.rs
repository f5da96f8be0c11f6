//! MaskGateway on the real API server: a Mask and gateway Pod per replica
//! with owner references, routers and their objects, the scale
//! subresource, status, Masks waiting when slots run out, per-slot
//! WireGuard keys, and deletion freeing every slot. The tests play the
//! kubelet by writing Pod status.

use k8s_openapi::api::core::v1::{Node, NodeSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use vpno_api::{GatewayPhase, MaskGateway, MaskGatewaySpec, MaskGatewayStatus, NetworkSpec};

use super::*;

const KEYS3: &[(&str, &str)] = &[
    ("VPN_SERVICE_PROVIDER", "custom"),
    ("VPN_TYPE", "wireguard"),
    ("WIREGUARD_PRIVATE_KEY", "key-0"),
    ("WIREGUARD_PRIVATE_KEY_1", "key-1"),
    ("WIREGUARD_ADDRESSES_1", "10.64.0.3/32"),
    ("WIREGUARD_PRIVATE_KEY_2", "key-2"),
];

impl World {
    fn gateways(&self) -> Api<MaskGateway> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates MaskGateway `name` with `replicas` (service range given).
    async fn gateway(&self, name: &str, replicas: u32) -> MaskGateway {
        let gw = MaskGateway::new(
            name,
            MaskGatewaySpec {
                replicas,
                network: NetworkSpec {
                    service_cidr: Some("10.96.0.0/12".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        self.gateways()
            .create(&PostParams::default(), &gw)
            .await
            .expect("create MaskGateway")
    }

    /// Waits until the MaskGateway's status satisfies `f`.
    async fn status_until(
        &self,
        name: &str,
        what: &str,
        f: impl Fn(&MaskGatewayStatus) -> bool,
    ) -> MaskGatewayStatus {
        let api = self.gateways();
        eventually(what, async || {
            api.get(name).await.unwrap().status.filter(|s| f(s))
        })
        .await
    }

    /// Pods of MaskGateway `gw` with `role`, by name.
    async fn role_pods(&self, gw: &str, role: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!(
            "vpn.beebs.dev/mask-gateway={gw},vpn.beebs.dev/role={role}"
        ));
        let mut pods = self.pods().list(&lp).await.unwrap().items;
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// Waits for `n` Pods of `gw` with `role` (none being deleted).
    async fn wait_role_pods(&self, gw: &str, role: &str, n: usize) -> Vec<Pod> {
        eventually(&format!("{n} {role} Pods of {gw}"), async || {
            let pods = self.role_pods(gw, role).await;
            let live = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count();
            (pods.len() == n && live == n).then_some(pods)
        })
        .await
    }

    /// Plays the kubelet: every Pod of `gw` runs (bound to `node` when
    /// given: bound Pods are deleted only once a kubelet confirms) and is Ready.
    async fn make_ready(&self, gw: &str, node: Option<&str>) {
        for role in ["gateway", "router"] {
            for p in self.role_pods(gw, role).await {
                let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none();
                if let Some(node) = node.filter(|_| unbound) {
                    // Scheduling is the scheduler's job; bind as it would.
                    let binding = json!({
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": p.name_any()},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                    });
                    self.pods()
                        .create_subresource::<_, serde_json::Value>(
                            "binding",
                            &p.name_any(),
                            &PostParams::default(),
                            &binding,
                        )
                        .await
                        .expect("bind the Pod to the node");
                }
                play_kubelet(
                    &self.client,
                    &self.ns,
                    &p.name_any(),
                    json!({"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True"},
                        {"type": "ContainersReady", "status": "True"},
                    ]}),
                )
                .await;
            }
        }
    }
}

/// A Node named `name` with a pod range, deleted on drop.
struct TestNode {
    api: Api<Node>,
    name: String,
}

impl TestNode {
    async fn create(client: &Client, name: &str, pod_cidr: &str) -> Self {
        let api: Api<Node> = Api::all(client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(pod_cidr.into()),
                pod_cidrs: Some(vec![pod_cidr.into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        api.create(&PostParams::default(), &node).await.unwrap();
        TestNode {
            api,
            name: name.into(),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let (api, name) = (self.api.clone(), self.name.clone());
        tokio::spawn(async move { api.delete(&name, &DeleteParams::default()).await });
    }
}

fn controller_owner(obj: &impl kube::Resource) -> (String, String) {
    let o = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .expect("a controller owner reference");
    (o.kind.clone(), o.uid.clone())
}

fn args_of(p: &Pod) -> Vec<String> {
    p.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

#[tokio::test]
async fn renders_masks_gateway_pods_and_routers_for_n_replicas_with_owners_and_status() {
    let Some(w) = World::new("gw-render")
        .with(provider("wg", 3).data(KEYS3))
        .ready()
        .await
    else {
        return;
    };
    let node = format!("{}-node", w.ns);
    let _node = TestNode::create(&w.client, &node, "10.244.7.0/24").await;
    let gw = w.gateway("egress", 3).await;
    let gw_uid = gw.uid().unwrap();

    for i in 0..3 {
        let m = wait_mask_phase(&w.client, &w.ns, &format!("egress-{i}"), MaskPhase::Active).await;
        assert_eq!(controller_owner(&m), ("MaskGateway".into(), gw_uid.clone()));
        assert_eq!(m.labels()["vpn.beebs.dev/ordinal"], i.to_string());
    }
    let gateways = w.wait_role_pods("egress", "gateway", 3).await;
    let mut slots = Vec::new();
    for p in &gateways {
        let mask = p.labels()["vpn.beebs.dev/ordinal"].clone();
        let c = consumer(&w.client, &w.ns, &format!("egress-{mask}"))
            .await
            .unwrap();
        assert_eq!(
            controller_owner(p),
            ("MaskConsumer".into(), c.uid().unwrap())
        );
        let a = c.assignment().unwrap();
        let args = args_of(p);
        assert_eq!(flag(&args, "--slot"), Some(a.slot.to_string()));
        assert_eq!(flag(&args, "--lan-interface").as_deref(), Some("vpn0"));
        let env_from = p.spec.as_ref().unwrap().containers[0]
            .env_from
            .as_ref()
            .unwrap();
        assert_eq!(env_from[0].secret_ref.as_ref().unwrap().name, a.secret);
        assert_eq!(
            p.annotations()["vpn.beebs.dev/network-address"],
            format!("192.168.24.{}/22", 16 + mask.parse::<u32>().unwrap())
        );
        slots.push(a.slot);
    }
    slots.sort();
    assert_eq!(slots, [0, 1, 2], "each gateway on its own slot (and key)");

    let routers = w.wait_role_pods("egress", "router", 2).await;
    for (i, r) in routers.iter().enumerate() {
        assert_eq!(r.name_any(), format!("egress-router-{i}"));
        assert_eq!(controller_owner(r), ("MaskGateway".into(), gw_uid.clone()));
        let args = args_of(r);
        assert_eq!(flag(&args, "--discover"), Some(format!("{}/egress", w.ns)));
        assert_eq!(flag(&args, "--peer"), Some(format!("192.168.24.{}", 3 - i)));
    }
    let secret = Api::<Secret>::namespaced(w.client.clone(), &w.ns)
        .get("egress-router-key")
        .await
        .unwrap();
    assert_eq!(secret.data.as_ref().unwrap()["key"].0.len(), 32);
    assert_eq!(controller_owner(&secret).1, gw_uid);
    let sa = Api::<ServiceAccount>::namespaced(w.client.clone(), &w.ns)
        .get("egress-router")
        .await
        .unwrap();
    assert_eq!(controller_owner(&sa).1, gw_uid);
    let role = Api::<Role>::namespaced(w.client.clone(), &w.ns)
        .get("egress-router")
        .await
        .unwrap();
    assert_eq!(role.rules.unwrap()[0].verbs, ["get", "list", "watch"]);
    Api::<RoleBinding>::namespaced(w.client.clone(), &w.ns)
        .get("egress-router")
        .await
        .unwrap();
    // The routers' account may read the namespace's Pods (gateway
    // discovery) and nothing elsewhere.
    let mut config = TestEnv::shared().unwrap().config();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:egress-router", w.ns));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:authenticated".into(),
    ]);
    let as_router = Client::try_from(config).unwrap();
    let seen = eventually("the router's RoleBinding to take effect", async || {
        Api::<Pod>::namespaced(as_router.clone(), &w.ns)
            .list(
                &ListParams::default()
                    .labels("vpn.beebs.dev/mask-gateway=egress,vpn.beebs.dev/role=gateway"),
            )
            .await
            .ok()
    })
    .await;
    assert_eq!(seen.items.len(), 3);
    match Api::<Pod>::namespaced(as_router, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("the router's account reads other namespaces: {other:?}"),
    }

    let s = w
        .status_until("egress", "3 gateway Pods with slots", |s| {
            s.replicas == 3 && s.gateways.iter().all(|g| g.slot.is_some())
        })
        .await;
    assert_eq!(s.gateways.len(), 3);
    assert_eq!(s.ready_replicas, 0);
    assert!(s.nodes.iter().any(|n| n.node == node));
    let net = s.network.as_ref().unwrap();
    assert!(
        net.excludes.contains(&"10.244.7.0/24".to_string()),
        "{net:?}"
    );
    assert!(net.excludes.contains(&"10.96.0.0/12".to_string()));

    w.make_ready("egress", Some(&node)).await;
    let s = w
        .status_until("egress", "Ready with 3 gateways", |s| {
            s.ready_replicas == 3
                && s.conditions
                    .iter()
                    .any(|c| c.kind == "Ready" && c.status == "True")
        })
        .await;
    assert_eq!(s.gateways_ready.as_deref(), Some("3/3"));
    assert!(
        s.gateways
            .iter()
            .all(|g| g.phase == GatewayPhase::Ready && g.node.as_deref() == Some(node.as_str()))
    );
    assert_eq!(s.routers.len(), 2);
    let degraded = s.conditions.iter().find(|c| c.kind == "Degraded").unwrap();
    assert_eq!(degraded.status, "False");
    assert_eq!(s.observed_generation, gw.metadata.generation);
}

#[tokio::test]
async fn the_scale_subresource_scales_down_from_the_top_and_back_up() {
    let Some(w) = World::new("gw-scale")
        .with(provider("wg", 3).data(KEYS3))
        .ready()
        .await
    else {
        return;
    };
    w.gateway("egress", 3).await;
    w.wait_role_pods("egress", "gateway", 3).await;
    let scale = w.gateways().get_scale("egress").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));

    w.gateways()
        .patch_scale(
            "egress",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let pods = w.wait_role_pods("egress", "gateway", 1).await;
    assert_eq!(pods[0].name_any(), "egress-0", "the highest ordinals go");
    eventually("Masks 1 and 2 gone", async || {
        let names: Vec<String> = masks_in(&w.client, &w.ns)
            .await
            .iter()
            .map(|m| m.name_any())
            .collect();
        (names == ["egress-0"]).then_some(())
    })
    .await;
    eventually("two slots freed", async || {
        (reservations(&w.client, &w.ns).await.len() == 1).then_some(())
    })
    .await;
    let scale = eventually("scale status at 1", async || {
        let s = w.gateways().get_scale("egress").await.unwrap();
        (s.status.as_ref()?.replicas == 1).then_some(s)
    })
    .await;
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("vpn.beebs.dev/mask-gateway=egress,vpn.beebs.dev/role=gateway")
    );

    w.gateways()
        .patch_scale(
            "egress",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    w.wait_role_pods("egress", "gateway", 3).await;
    assert_no_leaks(&w.client, &w.ns).await;
}

#[tokio::test]
async fn gateways_wait_for_slots_and_a_slot_without_its_own_key_gets_no_pod() {
    // Two slots; only the plain key: slot 0 runs, slot 1 must not share it.
    let Some(w) = World::new("gw-wait")
        .with(provider("wg", 2).data(&[
            ("VPN_TYPE", "wireguard"),
            ("WIREGUARD_PRIVATE_KEY", "key-0"),
        ]))
        .ready()
        .await
    else {
        return;
    };
    w.gateway("egress", 3).await;
    let s = w
        .status_until("egress", "one gateway Failed, one Waiting", |s| {
            s.gateways.iter().any(|g| g.phase == GatewayPhase::Failed)
                && s.gateways.iter().any(|g| g.phase == GatewayPhase::Waiting)
        })
        .await;
    let failed = s
        .gateways
        .iter()
        .find(|g| g.phase == GatewayPhase::Failed)
        .unwrap();
    assert_eq!(failed.slot, Some(1));
    assert!(
        failed
            .message
            .as_deref()
            .unwrap()
            .contains("WIREGUARD_PRIVATE_KEY_1"),
        "{failed:?}"
    );
    let waiting = s
        .gateways
        .iter()
        .find(|g| g.phase == GatewayPhase::Waiting)
        .unwrap();
    assert!(waiting.message.is_some(), "says why it waits: {waiting:?}");
    assert_eq!(
        wait_mask_phase(&w.client, &w.ns, &waiting.mask, MaskPhase::Waiting)
            .await
            .name_any(),
        waiting.mask
    );
    let pods = w.wait_role_pods("egress", "gateway", 1).await;
    let only = consumer(
        &w.client,
        &w.ns,
        &format!("egress-{}", pods[0].labels()["vpn.beebs.dev/ordinal"]),
    )
    .await
    .unwrap();
    assert_eq!(only.assignment().unwrap().slot, 0);
    let degraded = s.conditions.iter().find(|c| c.kind == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    eventually("a GatewayFailed Event", async || {
        events_about(&w.client, &w.ns, "egress")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("GatewayFailed"))
    })
    .await;

    // Without a service range, the network is not published and Ready says why.
    let bare = MaskGateway::new("bare", MaskGatewaySpec::default());
    w.gateways()
        .create(&PostParams::default(), &bare)
        .await
        .unwrap();
    let s = w
        .status_until("bare", "Ready=False ServiceCidrUnknown", |s| {
            s.conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.reason.as_deref() == Some("ServiceCidrUnknown"))
        })
        .await;
    assert!(s.network.is_none());
}

#[tokio::test]
async fn deleting_the_gateway_removes_everything_and_frees_every_slot() {
    let Some(w) = World::new("gw-delete")
        .with(provider("wg", 3).data(KEYS3))
        .ready()
        .await
    else {
        return;
    };
    w.gateway("egress", 3).await;
    w.wait_role_pods("egress", "gateway", 3).await;
    w.wait_role_pods("egress", "router", 2).await;
    w.make_ready("egress", None).await;
    assert_eq!(reservations(&w.client, &w.ns).await.len(), 3);

    delete(&w.gateways(), "egress").await;
    eventually("every Pod, Mask, consumer and slot gone", async || {
        let pods = w.pods().list(&ListParams::default()).await.unwrap().items;
        let masks = masks_in(&w.client, &w.ns).await;
        let consumers = Api::<MaskConsumer>::namespaced(w.client.clone(), &w.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let held = reservations(&w.client, &w.ns).await;
        (pods.is_empty() && masks.is_empty() && consumers.is_empty() && held.is_empty())
            .then_some(())
    })
    .await;
    eventually("the routers' key and account gone", async || {
        let secrets = Api::<Secret>::namespaced(w.client.clone(), &w.ns);
        let accounts = Api::<ServiceAccount>::namespaced(w.client.clone(), &w.ns);
        (secrets
            .get_opt("egress-router-key")
            .await
            .unwrap()
            .is_none()
            && accounts.get_opt("egress-router").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    let p = wait_provider_phase(&w.client, &w.ns, "wg", ProviderPhase::Ready).await;
    assert_eq!(p.status.unwrap().active_slots.unwrap_or(0), 0);
}
