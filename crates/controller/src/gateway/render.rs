//! The Pods and objects a MaskGateway runs, rendered from data: gateway Pods
//! (one per held slot, owned by its MaskConsumer), router Pods, the routers'
//! ServiceAccount/Role/RoleBinding and heartbeat key.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, Pod, PodSpec, Probe, SecretEnvSource, SecretKeySelector,
    SecretVolumeSource, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use vpno_api::gateway::DEFAULT_GLUETUN_IMAGE;
use vpno_api::names::{
    GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION, ROLE_GATEWAY, ROLE_ROUTER,
};
use vpno_api::{MaskGateway, TunnelType};
use vpno_net::layout::GatewayLayout;
use vpno_tunnel::{is_slot_variable, slot_variable};

use super::replicas::replica_labels;
use crate::effect::{CredentialKeys, RandomKey};

/// Annotation on rendered Pods: a digest of what they were rendered from;
/// a Pod whose digest differs from today's rendering is replaced.
pub(crate) const TEMPLATE_ANNOTATION: &str = "vpn.beebs.dev/template";
/// The interface the CNI plugin gives role Pods on the gateway network.
pub(crate) const NETWORK_INTERFACE: &str = "vpn0";
/// Port of the gateway agent's /healthz.
pub(crate) const GATEWAY_PORT: i32 = 9090;
/// Port of the router's /healthz and /status.
pub(crate) const ROUTER_PORT: i32 = 9095;
/// Where the routers' heartbeat key is mounted.
const ROUTER_KEY_DIR: &str = "/etc/vpno/router-key";
/// The data key of the heartbeat key Secret.
pub(crate) const ROUTER_KEY: &str = "key";

/// Image and pull policy of the Pods the controller runs (`vpn-operator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodImages {
    /// The `vpn-operator` image (gateway agent and router).
    pub agent: String,
    /// Pull policy of the rendered containers.
    pub pull_policy: String,
}

impl Default for PodImages {
    fn default() -> Self {
        PodImages {
            agent: "localhost/vpn-operator:dev".into(),
            pull_policy: "IfNotPresent".into(),
        }
    }
}

/// What a gateway Pod is rendered from.
pub(crate) struct GatewayPod<'a> {
    pub gw: &'a MaskGateway,
    pub ordinal: u32,
    pub slot: u32,
    /// The credentials copy in the gateway's namespace.
    pub secret: &'a str,
    pub keys: &'a CredentialKeys,
    pub layout: &'a GatewayLayout,
    pub address: std::net::Ipv4Addr,
    pub owner: OwnerReference,
    pub images: &'a PodImages,
}

/// The name of gateway `ordinal`'s Pod.
pub(crate) fn gateway_pod_name(gw: &str, ordinal: u32) -> String {
    format!("{gw}-{ordinal}")
}

/// The name of router `index`'s Pod.
pub(crate) fn router_pod_name(gw: &str, index: u32) -> String {
    format!("{gw}-router-{index}")
}

/// The name of the routers' ServiceAccount, Role and RoleBinding.
pub(crate) fn router_account_name(gw: &str) -> String {
    format!("{gw}-router")
}

/// The name of the routers' heartbeat key Secret.
pub(crate) fn router_key_name(gw: &str) -> String {
    format!("{gw}-router-key")
}

/// Whether the account behind `keys` is WireGuard (one key per device).
pub(crate) fn is_wireguard(kind: TunnelType, keys: &CredentialKeys) -> bool {
    kind == TunnelType::Native || keys.vpn_type.as_deref() == Some("wireguard")
}

/// Why slot `slot` cannot run a gateway without sharing a WireGuard key.
pub(crate) fn slot_key_problem(
    kind: TunnelType,
    keys: &CredentialKeys,
    slot: u32,
) -> Option<String> {
    if !is_wireguard(kind, keys) {
        return None;
    }
    let own = slot_variable("WIREGUARD_PRIVATE_KEY", slot);
    let has = |k: &str| keys.keys.contains(k);
    if has(&own) || (slot == 0 && has("WIREGUARD_PRIVATE_KEY")) {
        return None;
    }
    Some(if slot == 0 {
        "the provider Secret has no WIREGUARD_PRIVATE_KEY (nor WIREGUARD_PRIVATE_KEY_0)".into()
    } else {
        format!(
            "the provider Secret has no {own}: slot {slot} needs a WireGuard key of its own \
             (one key is one device at the provider); add {own} (and WIREGUARD_ADDRESSES_{slot}) \
             to the provider Secret, or lower the provider's maxSlots"
        )
    })
}

fn labels(gw: &MaskGateway, role: &str) -> BTreeMap<String, String> {
    [
        (GATEWAY_LABEL.to_string(), gw.name_any()),
        (GATEWAY_ROLE_LABEL.to_string(), role.to_string()),
    ]
    .into()
}

fn capabilities(add: &[&str]) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            add: Some(add.iter().map(|c| c.to_string()).collect()),
            drop: Some(vec!["ALL".into()]),
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(2),
        failure_threshold: Some(2),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn tun_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "dev-net-tun".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/dev/net/tun".into(),
                type_: Some("CharDevice".into()),
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "dev-net-tun".into(),
            mount_path: "/dev/net/tun".into(),
            ..Default::default()
        },
    )
}

/// The slot's own values (`X_<slot>`) as the plain names gluetun reads,
/// by the rule the native tunnel applies ([`vpno_tunnel::slot_env`]).
fn slot_env_refs(secret: &str, keys: &CredentialKeys, slot: u32) -> Vec<EnvVar> {
    let suffix = format!("_{slot}");
    keys.keys
        .iter()
        .filter_map(|k| {
            let base = k.strip_suffix(&suffix).filter(|b| is_slot_variable(b))?;
            Some(EnvVar {
                name: base.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: k.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            })
        })
        .collect()
}

/// Gateway `ordinal`'s Pod: our agent (native WireGuard, `--slot`) or
/// gluetun beside our agent on `tun0`.
pub(crate) fn gateway_pod(p: &GatewayPod<'_>) -> Pod {
    let gw = p.gw;
    let (tun, tun_mount) = tun_volume();
    let mut labels = labels(gw, ROLE_GATEWAY);
    labels.extend(replica_labels(gw, p.ordinal));
    let env_from = vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: p.secret.into(),
            optional: Some(false),
        }),
        ..Default::default()
    }];
    let mtu = gw
        .spec
        .tunnel
        .mtu
        .map(|m| env("WIREGUARD_MTU", &m.to_string()));
    let mut args: Vec<String> = [
        "gateway",
        "--lan-interface",
        NETWORK_INTERFACE,
        "--gateway-network",
        &p.layout.network().to_string(),
        "--listen",
        &format!("0.0.0.0:{GATEWAY_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Forwarded client traffic is accepted only from the routers' pinned MACs.
    let routers =
        p.gw.spec
            .routers
            .unwrap_or(vpno_api::gateway::DEFAULT_ROUTERS);
    for i in 0..routers {
        args.extend([
            "--router-mac".to_string(),
            vpno_sys::mac::format_mac(&vpno_net::layout::router_mac(i)),
        ]);
    }
    let mut agent = Container {
        name: "gateway".into(),
        image: Some(p.images.agent.clone()),
        image_pull_policy: Some(p.images.pull_policy.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("health".into()),
            container_port: GATEWAY_PORT,
            ..Default::default()
        }]),
        // Ready while the tunnel passes traffic; alive while the agent loop runs.
        readiness_probe: Some(http_probe("/readyz", GATEWAY_PORT)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..http_probe("/healthz", GATEWAY_PORT)
        }),
        security_context: Some(capabilities(&["NET_ADMIN"])),
        ..Default::default()
    };
    let mut containers = Vec::new();
    match gw.spec.tunnel.kind {
        TunnelType::Native => {
            args.extend(["--slot".to_string(), p.slot.to_string()]);
            agent.env_from = Some(env_from);
            agent.env = mtu.map(|m| vec![m]);
            agent.volume_mounts = Some(vec![tun_mount]);
        }
        TunnelType::Gluetun => {
            args.extend(["--tunnel-interface".to_string(), "tun0".to_string()]);
            let mut vars = slot_env_refs(p.secret, p.keys, p.slot);
            vars.push(env(
                "FIREWALL_OUTBOUND_SUBNETS",
                &p.layout.network().to_string(),
            ));
            vars.extend(mtu);
            for (k, v) in gw.spec.tunnel.env.iter().flatten() {
                vars.retain(|e| &e.name != k);
                vars.push(env(k, v));
            }
            containers.push(Container {
                name: "gluetun".into(),
                image: Some(
                    gw.spec
                        .tunnel
                        .image
                        .clone()
                        .unwrap_or_else(|| DEFAULT_GLUETUN_IMAGE.into()),
                ),
                env_from: Some(env_from),
                env: Some(vars),
                security_context: Some(capabilities(&["NET_ADMIN"])),
                volume_mounts: Some(vec![tun_mount]),
                ..Default::default()
            });
        }
    }
    agent.args = Some(args);
    containers.insert(0, agent);
    let address = p.layout.with_prefix(p.address).to_string();
    let digest = gateway_digest(p);
    finish(
        ObjectMeta {
            name: Some(gateway_pod_name(&gw.name_any(), p.ordinal)),
            namespace: gw.namespace(),
            labels: Some(labels),
            annotations: Some([(NETWORK_ADDRESS_ANNOTATION.to_string(), address)].into()),
            owner_references: Some(vec![p.owner.clone()]),
            ..Default::default()
        },
        PodSpec {
            containers,
            volumes: Some(vec![tun]),
            // The agent never talks to the API server.
            automount_service_account_token: Some(false),
            ..Default::default()
        },
        digest,
    )
}

/// The digest of what gateway Pod `p` is rendered from, apart from which
/// keys the Secret holds (known only when a Pod is made).
pub(crate) fn gateway_digest(p: &GatewayPod<'_>) -> String {
    let inputs = serde_json::json!({
        "tunnel": p.gw.spec.tunnel,
        "network": p.layout.network().to_string(),
        "address": p.address.to_string(),
        "slot": p.slot,
        "secret": p.secret,
        "owner": p.owner.uid,
        "images": [&p.images.agent, &p.images.pull_policy],
    });
    fnv1a(&inputs.to_string())
}

/// What router Pods are rendered from.
pub(crate) struct RouterPod<'a> {
    pub gw: &'a MaskGateway,
    pub index: u32,
    /// How many routers there are.
    pub count: u32,
    pub layout: &'a GatewayLayout,
    pub owner: OwnerReference,
    pub images: &'a PodImages,
}

/// Router `index`'s Pod: learns gateways from the API, holds the VIP when
/// its priority wins, authenticates heartbeats with the shared key.
pub(crate) fn router_pod(p: &RouterPod<'_>) -> Option<Pod> {
    let gw = p.gw;
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let layout = p.layout;
    let address = layout.router(p.index).ok()?;
    let mut args: Vec<String> = vec![
        "router".into(),
        "--interface".into(),
        NETWORK_INTERFACE.into(),
        "--client-subnet".into(),
        layout.network().to_string(),
        "--vip".into(),
        layout.with_prefix(layout.vip()).to_string(),
        "--discover".into(),
        format!("{ns}/{name}"),
        "--listen".into(),
        format!("0.0.0.0:{ROUTER_PORT}"),
        "--interface-mac".into(),
        vpno_sys::mac::format_mac(&vpno_net::layout::router_mac(p.index)),
    ];
    for other in (0..p.count).filter(|i| *i != p.index) {
        args.extend(["--peer".into(), layout.router(other).ok()?.to_string()]);
    }
    args.extend([
        "--priority".into(),
        (200 - p.index.min(199)).to_string(),
        "--heartbeat-key-file".into(),
        format!("{ROUTER_KEY_DIR}/{ROUTER_KEY}"),
    ]);
    let hc = &gw.spec.health_check;
    let flags = [
        ("--interval", hc.interval.clone()),
        ("--timeout", hc.timeout.clone()),
        ("--fall", hc.fall.map(|v| v.to_string())),
        ("--rise", hc.rise.map(|v| v.to_string())),
    ];
    for (flag, value) in flags {
        if let Some(v) = value {
            args.extend([flag.to_string(), v]);
        }
    }
    let container = Container {
        name: "router".into(),
        image: Some(p.images.agent.clone()),
        image_pull_policy: Some(p.images.pull_policy.clone()),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("status".into()),
            container_port: ROUTER_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/healthz", ROUTER_PORT)),
        security_context: Some(capabilities(&["NET_ADMIN", "NET_RAW"])),
        volume_mounts: Some(vec![VolumeMount {
            name: "router-key".into(),
            mount_path: ROUTER_KEY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let key = Volume {
        name: "router-key".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(router_key_name(&name)),
            default_mode: Some(0o400),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = PodSpec {
        containers: vec![container],
        volumes: Some(vec![key]),
        service_account_name: Some(router_account_name(&name)),
        ..Default::default()
    };
    let digest = fnv1a(&serde_json::to_string(&spec).unwrap_or_default());
    Some(finish(
        ObjectMeta {
            name: Some(router_pod_name(&name, p.index)),
            namespace: Some(ns),
            labels: Some(labels(gw, ROLE_ROUTER)),
            annotations: Some(
                [(
                    NETWORK_ADDRESS_ANNOTATION.to_string(),
                    layout.with_prefix(address).to_string(),
                )]
                .into(),
            ),
            owner_references: Some(vec![p.owner.clone()]),
            ..Default::default()
        },
        spec,
        digest,
    ))
}

/// The Pod with its template digest annotated.
fn finish(mut metadata: ObjectMeta, spec: PodSpec, digest: String) -> Pod {
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_ANNOTATION.into(), digest);
    Pod {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

/// FNV-1a, written here because it is eight lines: stable across builds and
/// Rust versions (std's hasher is not), which is all a change marker needs.
fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a live Pod carries the template digest `digest`.
pub(crate) fn has_template(live: &Pod, digest: &str) -> bool {
    live.annotations()
        .get(TEMPLATE_ANNOTATION)
        .map(String::as_str)
        == Some(digest)
}

/// The routers' ServiceAccount, Role (read the namespace's Pods: gateway
/// discovery) and RoleBinding.
pub(crate) fn router_account(
    gw: &MaskGateway,
    owner: &OwnerReference,
) -> (ServiceAccount, Role, RoleBinding) {
    let name = router_account_name(&gw.name_any());
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: gw.namespace(),
        labels: Some(labels(gw, ROLE_ROUTER)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let sa = ServiceAccount {
        metadata: meta.clone(),
        automount_service_account_token: Some(true),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: ["get", "list", "watch"]
                .iter()
                .map(|v| v.to_string())
                .collect(),
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: gw.namespace(),
            ..Default::default()
        }]),
    };
    (sa, role, binding)
}

/// The routers' heartbeat key (32 random bytes, created once).
pub(crate) fn router_key(gw: &MaskGateway, owner: &OwnerReference) -> RandomKey {
    RandomKey {
        namespace: gw.namespace().unwrap_or_default(),
        name: router_key_name(&gw.name_any()),
        key: ROUTER_KEY.into(),
        labels: labels(gw, ROLE_ROUTER),
        owner: owner.clone(),
    }
}
