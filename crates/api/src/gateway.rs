//! `MaskGateway`: a VPN network for pods — N gateway Pods on N Mask slots,
//! routers with a VIP, and the clients (pods) that go out through them.
//!
//! Only types and their defaults live here; the controller renders the
//! objects, `vpno-net` plans addresses and MTU.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The default gateway network.
pub const DEFAULT_GATEWAY_NETWORK: &str = "192.168.24.0/22";
/// The default number of routers (active/standby on the VIP).
pub const DEFAULT_ROUTERS: u32 = 2;
/// The gluetun image used when `tunnel.type` is `gluetun` and no image is given.
pub const DEFAULT_GLUETUN_IMAGE: &str = "qmcgaw/gluetun:v3";

/// A VPN network for pods: `replicas` gateways, each holding one slot of an
/// eligible `MaskProvider` (through a `Mask` of its own, so account limits
/// hold), routers that spread client flows over the healthy gateways, and
/// the client pods chosen by `clients` or by the pod annotation
/// `vpn.beebs.dev/gateway`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpn.beebs.dev",
    version = "v1",
    kind = "MaskGateway",
    namespaced,
    status = "MaskGatewayStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"GATEWAYS","type":"string","jsonPath":".status.gatewaysReady"}"#,
    printcolumn = r#"{"name":"PUBLIC IPS","type":"string","jsonPath":".status.publicIPs"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MaskGatewaySpec {
    /// Number of gateways; each holds one provider slot (default 1).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: u32,
    /// Provider tags the gateways' Masks accept (any one match suffices);
    /// absent means any provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    /// How each gateway reaches the provider.
    #[serde(default)]
    pub tunnel: TunnelSpec,
    /// The gateway network clients and gateways share.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Number of routers: one active holds the VIP, the others stand by (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub routers: Option<u32>,
    /// How routers check the gateways.
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// Which pods go out through this gateway (besides pods annotated
    /// `vpn.beebs.dev/gateway: <name>` or `<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<ClientsSpec>,
}

fn default_replicas() -> u32 {
    1
}

/// The tunnel implementation a gateway runs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TunnelType {
    /// The operator's own userspace WireGuard, configured from the provider
    /// Secret's `WIREGUARD_*` variables (per slot where the Secret has them).
    #[default]
    Native,
    /// A gluetun container beside the gateway agent, on `tun0`.
    Gluetun,
}

/// How a gateway reaches its provider.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSpec {
    /// `native` (default) or `gluetun`.
    #[serde(default, rename = "type")]
    pub kind: TunnelType,
    /// MTU of the tunnel (default 1420); the gateway network's MTU follows it
    /// unless the underlay is too small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<u32>,
    /// The gluetun image (`gluetun` only; default `qmcgaw/gluetun:v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra environment for the gluetun container (`gluetun` only), on top
    /// of the provider Secret's variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

/// The gateway network: one L2 segment across nodes (bridge + VXLAN).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The network's range (default `192.168.24.0/22`): the first /26 holds
    /// the VIP, routers and gateways, each node's clients get a /26 of the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"))]
    pub cidr: Option<String>,
    /// Destinations that stay on the pods' primary network, besides the
    /// discovered pod and service ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// The cluster's service range, where the cluster does not tell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"))]
    pub service_cidr: Option<String>,
    /// The cluster's pod range, where Nodes do not carry `spec.podCIDR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"))]
    pub pod_cidr: Option<String>,
}

/// How routers health-check gateways.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Probe interval (duration, default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub interval: Option<String>,
    /// Timeout of one probe (duration, default `750ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Failed probes before a gateway leaves the nexthop group (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: Option<u32>,
    /// Passed probes before a gateway rejoins (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: Option<u32>,
}

/// Pods chosen as clients by labels (both selectors must match when both are given).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientsSpec {
    /// Namespaces whose pods are clients; absent means this MaskGateway's namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods that are clients; absent means every pod of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: SelectorOperator,
    /// Values for `In`/`NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Operators of a label selector requirement.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    #[default]
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_ok = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_ok
            && self
                .match_expressions
                .iter()
                .flatten()
                .all(|r| r.matches(labels))
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let listed = |v: &String| self.values.iter().flatten().any(|x| x == v);
        match self.operator {
            SelectorOperator::In => value.is_some_and(listed),
            SelectorOperator::NotIn => !value.is_some_and(listed),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Observed state of a `MaskGateway`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskGatewayStatus {
    /// Gateways that exist (Pods created), for the scale subresource.
    #[serde(default)]
    pub replicas: u32,
    /// Gateways whose tunnel passes traffic and that a router uses.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Label selector of the gateway Pods (for the scale subresource / HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `ready/wanted`, e.g. `3/4` (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways_ready: Option<String>,
    /// The ready gateways' public IPs, comma-separated (printer column).
    #[serde(default, rename = "publicIPs", skip_serializing_if = "Option::is_none")]
    pub public_ips: Option<String>,
    /// The network as planned: range, VIP, MTU and what stays outside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    /// Each node's slice of the network (client pods there take addresses
    /// from it); allocated by the controller, stable while the node exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSlice>,
    /// One entry per gateway (per replica ordinal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayStatus>,
    /// One entry per router Pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<RouterStatus>,
    /// `Ready` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The planned gateway network.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The network's range.
    pub cidr: String,
    /// The address clients route through.
    pub vip: String,
    /// MTU of the gateway network and client interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Destinations that stay on the pods' primary network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

/// A node's slice of the gateway network.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSlice {
    /// The Node's name.
    pub node: String,
    /// Its slice (CIDR).
    pub slice: String,
}

/// Where one gateway stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum GatewayPhase {
    /// Its Mask waits for a provider slot.
    #[default]
    Waiting,
    /// Slot held; the Pod is starting or its tunnel is not up yet.
    Starting,
    /// The tunnel passes traffic and a router uses it.
    Ready,
    /// The Pod runs but fails its health check.
    Unhealthy,
    /// It cannot run as configured (see `message`).
    Failed,
}

/// One gateway.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Replica ordinal (0-based); also names its Mask `<gateway>-<ordinal>`.
    pub ordinal: u32,
    /// Where it stands.
    pub phase: GatewayPhase,
    /// Its Mask (and MaskConsumer).
    pub mask: String,
    /// Its Pod, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node the Pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The provider (`namespace/name`) whose slot it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The slot it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Its address on the gateway network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its public IP as the gateway agent reports it.
    #[serde(default, rename = "publicIP", skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Why it is not Ready, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A router's role on the VIP.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum RouterRole {
    /// Holds the VIP.
    Active,
    /// Ready to take the VIP.
    Standby,
    /// Not known yet (Pod starting, not reachable).
    #[default]
    Unknown,
}

/// One router.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    /// Its Pod.
    pub pod: String,
    /// The node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its address on the gateway network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its role on the VIP.
    pub role: RouterRole,
}

/// A condition in the usual Kubernetes shape.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Degraded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: MaskGatewaySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.tunnel.kind, TunnelType::Native);
        assert_eq!(spec.routers, None);
        let wire = serde_json::to_value(&spec).unwrap();
        assert_eq!(wire["tunnel"]["type"], "native");
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "scraper")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::NotIn,
                    values: Some(vec!["debug".into()]),
                },
                LabelSelectorRequirement {
                    key: "vpn".into(),
                    operator: SelectorOperator::Exists,
                    values: None,
                },
            ]),
        };
        assert!(sel.matches(&labels(&[("app", "scraper"), ("vpn", "")])));
        assert!(!sel.matches(&labels(&[("app", "scraper")])));
        assert!(!sel.matches(&labels(&[
            ("app", "scraper"),
            ("vpn", ""),
            ("tier", "debug")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("vpn", "")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }
}
