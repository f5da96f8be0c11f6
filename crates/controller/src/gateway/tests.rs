//! Builders shared by the gateway module's unit tests, and the decision
//! tests: observed state in, effects (applied to the recording executor) out.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use kube::ResourceExt;
use vpno_api::names::{GATEWAY_LABEL, GATEWAY_ORDINAL_LABEL, NETWORK_ADDRESS_ANNOTATION};
use vpno_api::{
    AssignedProvider, GatewayPhase, Mask, MaskConsumer, MaskConsumerSpec, MaskConsumerStatus,
    MaskGateway, MaskGatewaySpec, MaskPhase, TunnelType,
};

use super::decide::{Decision, decide};
use super::observe::Observed;
use super::render::PodImages;
use super::replicas::mask_for;
use crate::context::controller_ref;
use crate::effect::tests::Recording;
use crate::effect::{CredentialKeys, Effect, Executor, Kind, NewObject, StatusWrite};

/// A MaskGateway `name` in namespace `apps` with `replicas` and a uid.
pub(crate) fn gateway(name: &str, replicas: u32) -> MaskGateway {
    let mut gw = MaskGateway::new(
        name,
        MaskGatewaySpec {
            replicas,
            ..Default::default()
        },
    );
    gw.metadata.namespace = Some("apps".into());
    gw.metadata.uid = Some(format!("uid-{name}"));
    gw.metadata.generation = Some(1);
    gw
}

/// The world one decision sees.
struct World {
    gw: MaskGateway,
    masks: Vec<Mask>,
    consumers: Vec<MaskConsumer>,
    pods: Vec<Pod>,
    credentials: BTreeMap<String, CredentialKeys>,
    service_cidr: Option<String>,
    router_key: bool,
    /// Agents' answers by Pod name.
    agents: BTreeMap<String, String>,
}

impl World {
    fn new(gw: MaskGateway) -> Self {
        World {
            gw,
            masks: Vec::new(),
            consumers: Vec::new(),
            pods: Vec::new(),
            credentials: BTreeMap::new(),
            service_cidr: Some("10.96.0.0/12".into()),
            router_key: true,
            agents: BTreeMap::new(),
        }
    }

    /// Masks for ordinals `0..n`, each with a consumer: Active on `slots[i]`
    /// of provider `vpn/p` when given, else Waiting.
    fn replicas(mut self, slots: &[Option<u32>]) -> Self {
        for (i, slot) in slots.iter().enumerate() {
            let mut m = mask_for(&self.gw, i as u32).unwrap();
            m.metadata.uid = Some(format!("mask-{i}"));
            let mut c = MaskConsumer::new(&m.name_any(), MaskConsumerSpec::default());
            c.metadata.namespace = m.namespace();
            c.metadata.uid = Some(format!("consumer-{i}"));
            c.metadata.owner_references = Some(vec![controller_ref(&m).unwrap()]);
            c.status = Some(match slot {
                Some(s) => MaskConsumerStatus {
                    phase: Some(MaskPhase::Active),
                    provider: Some(AssignedProvider {
                        name: "p".into(),
                        namespace: "vpn".into(),
                        uid: "p-uid".into(),
                        slot: *s,
                        reservation: format!("r-{s}"),
                        secret: format!("creds-{i}"),
                    }),
                    ..Default::default()
                },
                None => MaskConsumerStatus {
                    phase: Some(MaskPhase::Waiting),
                    message: Some("every eligible provider is full".into()),
                    ..Default::default()
                },
            });
            self.masks.push(m);
            self.consumers.push(c);
        }
        self
    }

    /// Credentials `creds-<i>` holding `keys`.
    fn keys(mut self, i: usize, keys: &[&str]) -> Self {
        self.credentials.insert(
            format!("creds-{i}"),
            CredentialKeys {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                vpn_type: None,
            },
        );
        self
    }

    fn observed(&self) -> Observed {
        Observed {
            gateway: Arc::new(self.gw.clone()),
            masks: self.masks.iter().cloned().map(Arc::new).collect(),
            consumers: self.consumers.iter().cloned().map(Arc::new).collect(),
            pods: self.pods.iter().cloned().map(Arc::new).collect(),
            nodes: Some(vec![super::network::NodeInfo {
                name: "node-a".into(),
                pod_cidrs: vec!["10.244.0.0/24".into()],
            }]),
            service_cidr: self.service_cidr.clone(),
            credentials: self.credentials.clone(),
            router_key_exists: self.router_key,
            agents: self.agents.clone(),
            images: PodImages::default(),
            now: "2026-12-02T00:00:00Z".into(),
        }
    }

    /// Decides, applies to a recording executor, and returns what it did.
    async fn run(&self) -> (Vec<Effect>, Decision) {
        let d = decide(&self.observed());
        let exec = Recording::default();
        exec.apply_all(d.effects.clone()).await.unwrap();
        (exec.taken(), d)
    }

    /// Plays the API server: created Pods exist (Ready when `ready`), the
    /// status written is the MaskGateway's.
    fn absorb(&mut self, effects: &[Effect], ready: bool) {
        for e in effects {
            match e {
                Effect::Create(NewObject::Pod(p)) => {
                    let mut p = (**p).clone();
                    p.metadata.uid = Some(format!("pod-{}", p.name_any()));
                    p.status = Some(pod_status(ready));
                    self.pods.push(p);
                }
                Effect::PatchStatus {
                    status: StatusWrite::Gateway { desired, .. },
                    ..
                } => self.gw.status = Some((**desired).clone()),
                _ => {}
            }
        }
    }
}

fn pod_status(ready: bool) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn created_pods(effects: &[Effect]) -> Vec<&Pod> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Create(NewObject::Pod(p)) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

fn deleted(effects: &[Effect], kind: Kind) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteIf { target, .. } if target.kind == kind => Some(target.name.clone()),
            _ => None,
        })
        .collect()
}

fn written(effects: &[Effect]) -> Option<&vpno_api::MaskGatewayStatus> {
    effects.iter().find_map(|e| match e {
        Effect::PatchStatus {
            status: StatusWrite::Gateway { desired, .. },
            ..
        } => Some(desired.as_ref()),
        _ => None,
    })
}

fn condition<'a>(s: &'a vpno_api::MaskGatewayStatus, kind: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.kind == kind).unwrap();
    (c.status.as_str(), c.reason.as_deref().unwrap_or_default())
}

fn args(p: &Pod) -> Vec<String> {
    p.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

#[tokio::test]
async fn a_new_gateway_gets_masks_routers_their_account_and_key_and_shows_it_waits() {
    let mut w = World::new(gateway("egress", 2));
    w.router_key = false;
    let (effects, d) = w.run().await;
    let masks: Vec<String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Create(NewObject::Mask(m)) => Some(m.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(masks, ["egress-0", "egress-1"]);
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Create(NewObject::RandomKey(k)) if k.name == "egress-router-key" && k.key == "key"
            && k.owner.uid == "uid-egress")));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Create(NewObject::RoleBinding(_))))
    );
    let routers: Vec<String> = created_pods(&effects)
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(routers, ["egress-router-0", "egress-router-1"]);
    let s = written(&effects).unwrap();
    assert_eq!((s.replicas, s.ready_replicas), (0, 0));
    assert_eq!(s.gateways_ready.as_deref(), Some("0/2"));
    assert_eq!(
        s.selector.as_deref(),
        Some("vpn.beebs.dev/mask-gateway=egress,vpn.beebs.dev/role=gateway")
    );
    assert!(s.gateways.iter().all(|g| g.phase == GatewayPhase::Waiting));
    assert_eq!(condition(s, "Ready"), ("False", "NoGatewayReady"));
    assert_eq!(condition(s, "Degraded"), ("True", "GatewaysNotReady"));
    let net = s.network.as_ref().unwrap();
    assert_eq!(
        net.excludes,
        ["10.96.0.0/12", "10.244.0.0/24"],
        "address order"
    );
    assert_eq!(s.nodes[0].node, "node-a");
    assert!(d.recheck.is_some(), "degraded: looked at again");
}

#[tokio::test]
async fn each_active_slot_gets_a_gateway_pod_owned_by_its_consumer() {
    let w = World::new(gateway("egress", 2))
        .replicas(&[Some(0), Some(1)])
        .keys(0, &["WIREGUARD_PRIVATE_KEY"])
        .keys(1, &["WIREGUARD_PRIVATE_KEY", "WIREGUARD_PRIVATE_KEY_1"]);
    let (effects, _) = w.run().await;
    let pods: Vec<&Pod> = created_pods(&effects)
        .into_iter()
        .filter(|p| p.labels().contains_key(GATEWAY_ORDINAL_LABEL))
        .collect();
    assert_eq!(pods.len(), 2);
    for (i, p) in pods.iter().enumerate() {
        assert_eq!(p.name_any(), format!("egress-{i}"));
        assert_eq!(p.labels()[GATEWAY_LABEL], "egress");
        assert_eq!(p.labels()["vpn.beebs.dev/role"], "gateway");
        assert_eq!(
            p.annotations()[NETWORK_ADDRESS_ANNOTATION],
            format!("192.168.24.{}/22", 16 + i)
        );
        let owner = &p.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("MaskConsumer", format!("consumer-{i}").as_str(), Some(true))
        );
        let a = args(p);
        let slot = a.iter().position(|x| x == "--slot").unwrap();
        assert_eq!(a[slot + 1], i.to_string());
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env_from = c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap();
        assert_eq!(env_from.name, format!("creds-{i}"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_ref().unwrap(),
            &["NET_ADMIN"]
        );
        assert_eq!(
            p.spec.as_ref().unwrap().automount_service_account_token,
            Some(false)
        );
        let tun = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(
            tun.host_path.as_ref().unwrap().type_.as_deref(),
            Some("CharDevice")
        );
    }
    let s = written(&effects).unwrap();
    assert_eq!(s.gateways[1].slot, Some(1));
    assert_eq!(s.gateways[1].provider.as_deref(), Some("vpn/p"));
    assert_eq!(s.gateways[0].phase, GatewayPhase::Starting);
}

#[tokio::test]
async fn a_wireguard_slot_without_its_own_key_gets_no_pod_and_says_why() {
    let w = World::new(gateway("egress", 2))
        .replicas(&[Some(0), Some(3)])
        .keys(0, &["WIREGUARD_PRIVATE_KEY"])
        .keys(1, &["WIREGUARD_PRIVATE_KEY"]);
    let (effects, d) = w.run().await;
    let names: Vec<String> = created_pods(&effects)
        .iter()
        .map(|p| p.name_any())
        .filter(|n| !n.contains("router"))
        .collect();
    assert_eq!(names, ["egress-0"], "slot 3 never borrows slot 0's key");
    let s = written(&effects).unwrap();
    let g = &s.gateways[1];
    assert_eq!(g.phase, GatewayPhase::Failed);
    assert!(
        g.message
            .as_deref()
            .unwrap()
            .contains("WIREGUARD_PRIVATE_KEY_3"),
        "{g:?}"
    );
    assert_eq!(condition(s, "Degraded"), ("True", "GatewayFailed"));
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Event(n) if n.warning && n.reason == "GatewayFailed" && n.note.contains("egress-1"))));
    assert!(d.recheck.is_some());
    // OpenVPN accounts (gluetun): one login serves every slot.
    let mut gw = gateway("egress", 2);
    gw.spec.tunnel.kind = TunnelType::Gluetun;
    let mut w = World::new(gw).replicas(&[Some(0), Some(3)]);
    for i in 0..2 {
        w.credentials.insert(
            format!("creds-{i}"),
            CredentialKeys {
                keys: ["OPENVPN_USER".to_string()].into(),
                vpn_type: Some("openvpn".into()),
            },
        );
    }
    let (effects, _) = w.run().await;
    assert_eq!(
        created_pods(&effects)
            .iter()
            .filter(|p| !p.name_any().contains("router"))
            .count(),
        2
    );
}

#[tokio::test]
async fn gluetun_gateways_get_the_slots_values_under_the_plain_names() {
    let mut gw = gateway("egress", 1);
    gw.spec.tunnel.kind = TunnelType::Gluetun;
    gw.spec.tunnel.env = Some([("SERVER_COUNTRIES".to_string(), "Sweden".to_string())].into());
    let mut w = World::new(gw).replicas(&[Some(2)]);
    w.credentials.insert(
        "creds-0".into(),
        CredentialKeys {
            keys: [
                "WIREGUARD_PRIVATE_KEY",
                "WIREGUARD_PRIVATE_KEY_2",
                "WIREGUARD_ADDRESSES_2",
                "OTHER_2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            vpn_type: Some("wireguard".into()),
        },
    );
    let (effects, _) = w.run().await;
    let pod = created_pods(&effects)
        .into_iter()
        .find(|p| p.name_any() == "egress-0")
        .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 2);
    let a = args(pod);
    assert!(a.windows(2).any(|w| w == ["--tunnel-interface", "tun0"]));
    assert!(!a.contains(&"--slot".to_string()));
    let gluetun = &spec.containers[1];
    assert_eq!(gluetun.image.as_deref(), Some("qmcgaw/gluetun:v3"));
    let env = gluetun.env.as_ref().unwrap();
    let from = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| r.key.clone())
    };
    assert_eq!(
        from("WIREGUARD_PRIVATE_KEY").as_deref(),
        Some("WIREGUARD_PRIVATE_KEY_2")
    );
    assert_eq!(
        from("WIREGUARD_ADDRESSES").as_deref(),
        Some("WIREGUARD_ADDRESSES_2")
    );
    assert_eq!(
        from("OTHER"),
        None,
        "only WireGuard/endpoint variables are per slot"
    );
    assert!(
        env.iter()
            .any(|e| e.name == "SERVER_COUNTRIES" && e.value.as_deref() == Some("Sweden"))
    );
}

#[tokio::test]
async fn credentials_not_read_yet_mean_no_pod_and_a_second_look() {
    let w = World::new(gateway("egress", 1)).replicas(&[Some(0)]);
    let (effects, d) = w.run().await;
    assert!(
        created_pods(&effects)
            .iter()
            .all(|p| p.name_any().contains("router"))
    );
    assert!(d.recheck.is_some());
}

#[tokio::test]
async fn ready_pods_make_it_ready_and_an_unchanged_status_is_not_written_again() {
    let mut w = World::new(gateway("egress", 2))
        .replicas(&[Some(0), Some(1)])
        .keys(0, &["WIREGUARD_PRIVATE_KEY"])
        .keys(1, &["WIREGUARD_PRIVATE_KEY_1"]);
    let (effects, _) = w.run().await;
    w.absorb(&effects, true);
    let (effects, d) = w.run().await;
    assert!(created_pods(&effects).is_empty(), "{effects:?}");
    let s = written(&effects).unwrap();
    assert_eq!((s.replicas, s.ready_replicas), (2, 2));
    assert_eq!(s.gateways_ready.as_deref(), Some("2/2"));
    assert_eq!(condition(s, "Ready"), ("True", "GatewaysReady"));
    assert_eq!(condition(s, "Degraded"), ("False", "AsExpected"));
    assert_eq!(s.routers.len(), 2);
    assert_eq!(s.routers[0].address.as_deref(), Some("192.168.24.2/22"));
    assert_eq!(s.public_ips, None, "no agent answered");
    assert!(d.recheck.is_some(), "running agents are asked again");
    w.absorb(&effects, true);
    let (effects, _) = w.run().await;
    assert!(effects.is_empty(), "nothing changed: {effects:?}");
    // The agents answer: public IPs (printer column) and router roles.
    w.agents.insert("egress-0".into(), "203.0.113.10\n".into());
    w.agents.insert("egress-1".into(), "203.0.113.11".into());
    w.agents
        .insert("egress-router-0".into(), r#"{"role":"active"}"#.into());
    w.agents
        .insert("egress-router-1".into(), r#"{"role":"standby"}"#.into());
    let (effects, _) = w.run().await;
    let s = written(&effects).unwrap();
    assert_eq!(s.public_ips.as_deref(), Some("203.0.113.10,203.0.113.11"));
    assert_eq!(s.gateways[1].public_ip.as_deref(), Some("203.0.113.11"));
    assert_eq!(s.routers[0].role, vpno_api::RouterRole::Active);
    assert_eq!(s.routers[1].role, vpno_api::RouterRole::Standby);
}

#[tokio::test]
async fn scale_down_deletes_the_highest_masks_and_leaves_their_pods_to_the_consumers() {
    let mut w = World::new(gateway("egress", 3))
        .replicas(&[Some(0), Some(1), Some(2)])
        .keys(0, &["WIREGUARD_PRIVATE_KEY"])
        .keys(1, &["WIREGUARD_PRIVATE_KEY_1"])
        .keys(2, &["WIREGUARD_PRIVATE_KEY_2"]);
    let (effects, _) = w.run().await;
    w.absorb(&effects, true);
    w.gw.spec.replicas = 1;
    let (effects, _) = w.run().await;
    assert_eq!(deleted(&effects, Kind::Mask), ["egress-2", "egress-1"]);
    assert!(deleted(&effects, Kind::Pod).is_empty());
    let s = written(&effects).unwrap();
    assert_eq!(s.gateways.len(), 1);
    assert_eq!(s.gateways_ready.as_deref(), Some("1/1"));
}

#[tokio::test]
async fn stale_and_ended_pods_are_replaced_one_at_a_time() {
    let mut w = World::new(gateway("egress", 2))
        .replicas(&[Some(0), Some(1)])
        .keys(0, &["WIREGUARD_PRIVATE_KEY"])
        .keys(1, &["WIREGUARD_PRIVATE_KEY_1"]);
    let (effects, _) = w.run().await;
    w.absorb(&effects, true);
    // A new MTU changes every gateway's template: only one goes at a time.
    w.gw.spec.tunnel.mtu = Some(1380);
    let (effects, _) = w.run().await;
    let gone = deleted(&effects, Kind::Pod);
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].starts_with("egress-") && !gone[0].contains("router"));
    // A Pod of an earlier consumer, or one that ended, is deleted.
    w.gw.spec.tunnel.mtu = None;
    w.pods[0].metadata.owner_references.as_mut().unwrap()[0].uid = "consumer-earlier".into();
    w.pods[1].status.as_mut().unwrap().phase = Some("Failed".into());
    let (effects, _) = w.run().await;
    assert_eq!(deleted(&effects, Kind::Pod), ["egress-0", "egress-1"]);
}

#[tokio::test]
async fn routers_know_their_peers_priority_key_and_gateways_and_extra_ones_go() {
    let mut gw = gateway("egress", 1);
    gw.spec.routers = Some(3);
    gw.spec.health_check.interval = Some("500ms".into());
    gw.spec.health_check.fall = Some(3);
    let mut w = World::new(gw);
    let (effects, _) = w.run().await;
    let routers = created_pods(&effects);
    assert_eq!(routers.len(), 3);
    let a = args(routers[1]);
    let pairs: Vec<(&str, &str)> = a
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    for expected in [
        ("--interface", "vpn0"),
        ("--client-subnet", "192.168.24.0/22"),
        ("--vip", "192.168.24.1/22"),
        ("--discover", "apps/egress"),
        ("--peer", "192.168.24.2"),
        ("--peer", "192.168.24.4"),
        ("--priority", "199"),
        ("--heartbeat-key-file", "/etc/vpno/router-key/key"),
        ("--interval", "500ms"),
        ("--fall", "3"),
    ] {
        assert!(pairs.contains(&expected), "{expected:?} in {a:?}");
    }
    assert!(
        !a.contains(&"--rise".to_string()),
        "unset: the router's default"
    );
    let p = routers[1];
    assert_eq!(
        p.annotations()[NETWORK_ADDRESS_ANNOTATION],
        "192.168.24.3/22"
    );
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("egress-router"));
    let key = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(
        key.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("egress-router-key")
    );
    assert_eq!(p.owner_references()[0].kind, "MaskGateway");
    w.absorb(&effects, true);
    w.gw.spec.routers = Some(2);
    let (effects, _) = w.run().await;
    let gone = deleted(&effects, Kind::Pod);
    assert!(gone.contains(&"egress-router-2".to_string()), "{gone:?}");
}

#[tokio::test]
async fn an_unknown_service_range_publishes_no_network_and_warns_once() {
    let mut w = World::new(gateway("egress", 1));
    w.service_cidr = None;
    let (effects, _) = w.run().await;
    let s = written(&effects).unwrap();
    assert!(s.network.is_none());
    assert_eq!(condition(s, "Ready"), ("False", "ServiceCidrUnknown"));
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Event(n) if n.reason == "ServiceCidrUnknown" && n.note.contains("serviceCidr"))));
    w.absorb(&effects, false);
    let (effects, _) = w.run().await;
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Event(_))),
        "{effects:?}"
    );
    // Given by hand, it is used.
    w.gw.spec.network.service_cidr = Some("10.43.0.0/16".into());
    let (effects, _) = w.run().await;
    let s = written(&effects).unwrap();
    assert!(
        s.network
            .as_ref()
            .unwrap()
            .excludes
            .contains(&"10.43.0.0/16".to_string())
    );
}

#[tokio::test]
async fn replicas_beyond_the_networks_room_take_no_slot_and_say_so() {
    let mut gw = gateway("egress", 3);
    gw.spec.network.cidr = Some("10.9.0.0/24".into());
    gw.spec.network.service_cidr = Some("10.96.0.0/12".into());
    // Masks are made for min(replicas, what the infrastructure slice holds).
    let w = World::new(gw.clone());
    let (effects, _) = w.run().await;
    let masks = effects
        .iter()
        .filter(|e| matches!(e, Effect::Create(NewObject::Mask(_))))
        .count();
    let capacity = super::network::layout_of(&gw).unwrap().gateway_capacity();
    assert_eq!(masks as u32, 3.min(capacity));
    let mut big = gw;
    big.spec.replicas = capacity + 1;
    let w = World::new(big);
    let (effects, _) = w.run().await;
    let s = written(&effects).unwrap();
    let last = s.gateways.last().unwrap();
    assert_eq!(last.phase, GatewayPhase::Failed);
    assert!(
        last.message.as_deref().unwrap().contains("room for"),
        "{last:?}"
    );
    let masks = effects
        .iter()
        .filter(|e| matches!(e, Effect::Create(NewObject::Mask(_))))
        .count();
    assert_eq!(masks as u32, capacity);
}

#[tokio::test]
async fn a_deleted_gateway_is_left_to_the_garbage_collector() {
    let mut w = World::new(gateway("egress", 2)).replicas(&[Some(0), None]);
    w.gw.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let (effects, _) = w.run().await;
    assert!(effects.is_empty(), "{effects:?}");
}
