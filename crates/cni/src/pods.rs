//! Where a pod's annotations come from: the runtime (containerd passes them
//! in `runtimeConfig` to plugins declaring the capability), else the API
//! server through the config's kubeconfig.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

/// Errors looking a pod up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The kubeconfig cannot be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The API request failed.
    #[error("reading pod {namespace}/{name}: {source}")]
    Api {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// The narrow interface ADD uses to learn a pod's annotations.
#[allow(async_fn_in_trait)]
pub trait PodAnnotations {
    /// The annotations of pod `namespace`/`name` (empty if it has none).
    async fn annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, LookupError>;
}

/// Annotations the runtime handed over in the config.
#[derive(Debug, Clone)]
pub struct GivenAnnotations(pub BTreeMap<String, String>);

impl PodAnnotations for GivenAnnotations {
    async fn annotations(&self, _: &str, _: &str) -> Result<BTreeMap<String, String>, LookupError> {
        Ok(self.0.clone())
    }
}

/// Reads the pod from the API server with a kubeconfig file.
#[derive(Debug, Clone)]
pub struct KubeAnnotations {
    /// The kubeconfig path.
    pub kubeconfig: PathBuf,
}

impl PodAnnotations for KubeAnnotations {
    async fn annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, LookupError> {
        let bad = |message: String| LookupError::Kubeconfig {
            path: self.kubeconfig.clone(),
            message,
        };
        let raw = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| bad(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(raw, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
        let pod = pods.get(name).await.map_err(|source| LookupError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
        Ok(pod.metadata.annotations.unwrap_or_default())
    }
}
