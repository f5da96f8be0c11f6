//! The plugin's network configuration (stdin), as the node agent writes it
//! into the node's CNI config list after the cluster's own plugin.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;

use vpno_api::gateway::ClientsSpec;

use crate::spec::{CniError, Code};

/// The capability (and `runtimeConfig` key) through which containerd passes
/// pod annotations to plugins that declare it.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The MaskGateway a config serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GatewayRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One network configuration for this plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    /// `cniVersion`.
    pub cni_version: String,
    /// The network (config list) name; also names the address store directory.
    pub name: String,
    /// The MaskGateway whose clients this config attaches.
    pub gateway: GatewayRef,
    /// The whole gateway network (the pod's address carries its prefix length).
    pub network: Ipv4Net,
    /// This node's slice of `network`: pods here get addresses from it.
    pub slice: Ipv4Net,
    /// The router VIP, the next hop of every routed prefix.
    pub vip: Ipv4Addr,
    /// Destinations that stay on the primary interface.
    #[serde(default)]
    pub excludes: Vec<Ipv4Net>,
    /// MTU of the pod's gateway interface.
    pub mtu: u32,
    /// The node's gateway bridge.
    pub bridge: String,
    /// The pod-side interface name.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Addresses of the slice never handed out (besides the network's edges and the VIP).
    #[serde(default)]
    pub reserved: Vec<Ipv4Addr>,
    /// Where the address store lives (one directory per network name).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Kubeconfig for reading the pod (labels, annotations) and its
    /// namespace's labels from the API server; preferred over the runtime's
    /// annotations when set.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The MaskGateway's `clients` selectors (pods chosen by labels besides
    /// the annotation); needs `kubeconfig`.
    #[serde(default)]
    pub clients: Option<ClientsSpec>,
    /// Runtime-supplied values (capabilities), e.g. the pod's annotations.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The previous plugin's result, passed through (and extended) verbatim.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

/// The `runtimeConfig` keys this plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// Pod annotations (containerd, when the capability is declared).
    #[serde(rename = "io.kubernetes.cri.pod-annotations")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

fn default_interface() -> String {
    "vpn0".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cni/vpno")
}

/// Just the version, for VERSION and for errors before the rest parses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    cni_version: Option<String>,
}

/// The `cniVersion` of a config, if it has a readable one.
pub fn version_of(raw: &[u8]) -> Option<String> {
    serde_json::from_slice::<VersionOnly>(raw).ok()?.cni_version
}

impl PluginConfig {
    /// Parses and validates a config read from stdin.
    pub fn parse(raw: &[u8]) -> Result<Self, CniError> {
        let config: PluginConfig = serde_json::from_slice(raw).map_err(|e| {
            CniError::new(
                Code::Decode,
                "cannot decode the network configuration",
                e.to_string(),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(Code::InvalidConfig, msg, ""));
        if !self.network.contains(&self.slice) {
            return invalid(format!(
                "slice {} is not inside network {}",
                self.slice, self.network
            ));
        }
        if !self.network.contains(&self.vip) {
            return invalid(format!(
                "vip {} is not inside network {}",
                self.vip, self.network
            ));
        }
        if !(576..=65535).contains(&self.mtu) {
            return invalid(format!("mtu {} is outside 576..65535", self.mtu));
        }
        for (what, name) in [("interface", &self.interface), ("bridge", &self.bridge)] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return invalid(format!("{what} {name:?} is not a valid interface name"));
            }
        }
        if self.clients.is_some() && self.kubeconfig.is_none() {
            return invalid(
                "\"clients\" selectors need \"kubeconfig\" (pod and namespace labels come from the API server)"
                    .into(),
            );
        }
        if self.name.is_empty() || self.name.contains('/') || self.name.starts_with('.') {
            return invalid(format!(
                "network name {:?} cannot name a directory",
                self.name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "vpno-cni",
            "gateway": {"namespace": "vpn", "name": "egress"},
            "network": "192.168.24.0/22",
            "slice": "192.168.24.64/26",
            "vip": "192.168.24.1",
            "excludes": ["10.244.0.0/16", "10.96.0.0/12"],
            "mtu": 1420,
            "bridge": "vpno0",
        })
    }

    #[test]
    fn sample_parses_with_defaults() {
        let c = PluginConfig::parse(sample().to_string().as_bytes()).unwrap();
        assert_eq!(c.interface, "vpn0");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/vpno"));
        assert_eq!(c.excludes.len(), 2);
        assert!(c.prev_result.is_none() && c.runtime_config.pod_annotations.is_none());
    }

    #[test]
    fn runtime_annotations_are_read() {
        let mut v = sample();
        v["runtimeConfig"] = serde_json::json!({POD_ANNOTATIONS_CAPABILITY: {"a": "b"}});
        let c = PluginConfig::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.runtime_config.pod_annotations.unwrap()["a"], "b");
    }

    #[test]
    fn bad_configs_say_why() {
        let cases: [(&str, serde_json::Value, &str); 5] = [
            ("slice", "10.0.0.0/26".into(), "slice"),
            ("vip", "10.0.0.1".into(), "vip"),
            ("mtu", 100.into(), "mtu"),
            ("bridge", "a-very-long-bridge-name".into(), "bridge"),
            ("name", "../x".into(), "network name"),
        ];
        for (field, value, says) in cases {
            let mut v = sample();
            v[field] = value;
            let err = PluginConfig::parse(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{field}");
            assert!(err.msg.contains(says), "{err}");
        }
        let err = PluginConfig::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, Code::Decode);
        assert_eq!(
            version_of(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
    }
}
