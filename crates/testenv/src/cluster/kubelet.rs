//! Command lines and configuration of the node components: kubelet,
//! kube-scheduler and kube-proxy (pure functions of paths and ports).

use std::ffi::OsString;
use std::path::Path;

use super::network::{GATEWAY, POD_CIDR};

/// The node's name (`--hostname-override`).
pub const NODE_NAME: &str = "vpno-testenv-node";

/// The kubelet's `KubeletConfiguration` (JSON is YAML).
pub(crate) fn kubelet_config(ca_crt: &Path, resolv_conf: &Path) -> String {
    let doc = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": GATEWAY.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": false,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ca_crt},
        },
        "authorization": {"mode": "Webhook"},
        // "nameserver 127.0.0.1": no DNS off the machine (an empty file
        // would make containerd copy the host's resolv.conf).
        "resolvConf": resolv_conf,
        // Never garbage-collect the imported images (no registry to pull them again).
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        // Node Ready ~8 s sooner than with the default 10 s.
        "nodeStatusUpdateFrequency": "2s",
    });
    serde_json::to_string_pretty(&doc).expect("JSON value serializes")
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// kubelet's arguments.
pub(crate) fn kubelet_args(dir: &Path, kubeconfig: &Path, socket: &Path) -> Vec<OsString> {
    let root = dir.join("kubelet");
    let mut endpoint = OsString::from("unix://");
    endpoint.push(socket);
    vec![
        os("--config"),
        os(dir.join("kubelet.yaml")),
        os("--kubeconfig"),
        os(kubeconfig),
        os("--root-dir"),
        os(&root),
        os("--cert-dir"),
        os(root.join("pki")),
        os("--volume-plugin-dir"),
        os(root.join("volume-plugins")),
        os("--container-runtime=remote"),
        os("--container-runtime-endpoint"),
        endpoint,
        os(format!("--node-ip={GATEWAY}")),
        os(format!("--hostname-override={NODE_NAME}")),
    ]
}

/// kube-scheduler's arguments.
pub(crate) fn scheduler_args(kubeconfig: &Path, port: u16) -> Vec<OsString> {
    vec![
        os("--kubeconfig"),
        os(kubeconfig),
        os("--authentication-kubeconfig"),
        os(kubeconfig),
        os("--authorization-kubeconfig"),
        os(kubeconfig),
        os("--bind-address=127.0.0.1"),
        os(format!("--secure-port={port}")),
        os("--port=0"),
        os("--leader-elect=false"),
    ]
}

/// kube-proxy's arguments (iptables mode; conntrack sysctls left alone).
pub(crate) fn proxy_args(kubeconfig: &Path, healthz_port: u16, metrics_port: u16) -> Vec<OsString> {
    vec![
        os("--kubeconfig"),
        os(kubeconfig),
        os("--proxy-mode=iptables"),
        os(format!("--cluster-cidr={POD_CIDR}")),
        os(format!("--hostname-override={NODE_NAME}")),
        os(format!("--healthz-bind-address=127.0.0.1:{healthz_port}")),
        os(format!("--metrics-bind-address=127.0.0.1:{metrics_port}")),
        os(format!("--nodeport-addresses={POD_CIDR}")),
        os("--conntrack-max-per-core=0"),
        os("--conntrack-tcp-timeout-established=0"),
        os("--conntrack-tcp-timeout-close-wait=0"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_config_binds_the_gateway_and_never_collects_images() {
        let text = kubelet_config(Path::new("/d/ca.crt"), Path::new("/d/resolv.conf"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["address"], "10.244.0.1");
        assert_eq!(v["readOnlyPort"], 0);
        assert_eq!(v["imageGCHighThresholdPercent"], 100);
        assert_eq!(v["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(v["resolvConf"], "/d/resolv.conf");
    }

    #[test]
    fn kubelet_talks_to_our_containerd_socket() {
        let args = kubelet_args(Path::new("/d"), Path::new("/d/kc"), Path::new("/d/c.sock"));
        assert!(args.contains(&os("unix:///d/c.sock")));
        assert!(args.contains(&os("--root-dir")) && args.contains(&os("/d/kubelet")));
    }
}
