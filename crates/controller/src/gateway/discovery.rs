//! The cluster's service range, where the cluster tells it: the
//! `--service-cluster-ip-range` flag of kube-system's kube-apiserver Pod
//! (kubeadm and most installers run it as a static Pod), else the
//! `serviceSubnet` of kubeadm's `kubeadm-config` ConfigMap. Parsing is pure;
//! [`Ctx::discover_service_cidr`] reads and caches.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};

use crate::context::Ctx;

/// How long a failed discovery is remembered before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The flag kube-apiserver takes the service range from.
const FLAG: &str = "--service-cluster-ip-range";

/// The IPv4 service range in a kube-apiserver command line (the flag as
/// `--flag=value` or `--flag value`; dual-stack values keep the IPv4 range).
pub(crate) fn from_apiserver_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix(FLAG) {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_string()),
            Some("") => args.next().map(str::to_string),
            _ => None,
        };
        if let Some(v) = value.as_deref().and_then(ipv4_range) {
            return Some(v);
        }
    }
    None
}

/// The IPv4 `serviceSubnet` of kubeadm's `ClusterConfiguration` text.
pub(crate) fn from_kubeadm_config(cluster_configuration: &str) -> Option<String> {
    cluster_configuration.lines().find_map(|line| {
        let value = line.trim().strip_prefix("serviceSubnet:")?;
        ipv4_range(value.trim().trim_matches('"').trim_matches('\''))
    })
}

/// The first IPv4 network of a comma-separated list, normalised.
fn ipv4_range(list: &str) -> Option<String> {
    list.split(',')
        .find_map(|s| s.trim().parse::<ipnet::Ipv4Net>().ok())
        .map(|n| n.trunc().to_string())
}

/// What was found last, and when.
#[derive(Default)]
pub(crate) struct Discovered(std::sync::Mutex<Option<(Instant, Option<String>)>>);

impl Ctx {
    /// The service range, discovered once (a miss is retried after a minute;
    /// missing permissions or objects count as a miss).
    pub(crate) async fn discover_service_cidr(&self) -> Option<String> {
        if let Some((at, found)) = self.shared.service_cidr.0.lock().ok()?.clone()
            && (found.is_some() || at.elapsed() < RETRY_AFTER)
        {
            return found;
        }
        let found = match self.apiserver_flag().await {
            Some(v) => Some(v),
            None => self.kubeadm_config().await,
        };
        if let Ok(mut cache) = self.shared.service_cidr.0.lock() {
            *cache = Some((Instant::now(), found.clone()));
        }
        found
    }

    async fn apiserver_flag(&self) -> Option<String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "kube-system");
        let lp = ListParams::default().labels("component=kube-apiserver");
        let pods = self.metrics().read("Pod", api.list(&lp)).await.ok()?;
        pods.items.iter().find_map(|p| {
            let spec = p.spec.as_ref()?;
            spec.containers.iter().find_map(|c| {
                let words = c.command.iter().flatten().chain(c.args.iter().flatten());
                from_apiserver_args(words.map(String::as_str))
            })
        })
    }

    async fn kubeadm_config(&self) -> Option<String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), "kube-system");
        let cm = self
            .metrics()
            .read("ConfigMap", api.get_opt("kubeadm-config"))
            .await
            .ok()??;
        from_kubeadm_config(cm.data?.get("ClusterConfiguration")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_found_in_either_form_and_ipv4_wins_in_dual_stack() {
        let args = [
            "kube-apiserver",
            "--secure-port=6443",
            "--service-cluster-ip-range=10.96.0.0/12",
        ];
        assert_eq!(from_apiserver_args(args), Some("10.96.0.0/12".into()));
        let args = ["--service-cluster-ip-range", "fd00::/108,10.43.0.1/16"];
        assert_eq!(from_apiserver_args(args), Some("10.43.0.0/16".into()));
        assert_eq!(
            from_apiserver_args(["--service-cluster-ip-range-x=1"]),
            None
        );
        assert_eq!(from_apiserver_args(["--service-cluster-ip-range"]), None);
    }

    #[test]
    fn kubeadm_config_gives_the_service_subnet() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta2\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: \"10.96.0.0/12\"\n";
        assert_eq!(from_kubeadm_config(text), Some("10.96.0.0/12".into()));
        assert_eq!(
            from_kubeadm_config("networking:\n  podSubnet: 10.244.0.0/16\n"),
            None
        );
    }
}
