//! Where what the plugin knows about a pod comes from: the API server
//! through the config's kubeconfig (labels, annotations, the namespace's
//! labels), else the runtime (containerd passes annotations in
//! `runtimeConfig` to plugins declaring the capability).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::membership::PodFacts;

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

/// The narrow interface ADD uses to learn about a pod.
#[allow(async_fn_in_trait)]
pub trait PodLookup {
    /// What is known about pod `namespace`/`name`; its namespace's labels
    /// too when `namespace_labels`.
    async fn facts(
        &self,
        namespace: &str,
        name: &str,
        namespace_labels: bool,
    ) -> Result<PodFacts, LookupError>;
}

/// Annotations the runtime handed over in the config (no labels).
#[derive(Debug, Clone)]
pub struct GivenAnnotations(pub BTreeMap<String, String>);

impl PodLookup for GivenAnnotations {
    async fn facts(&self, _: &str, _: &str, _: bool) -> Result<PodFacts, LookupError> {
        Ok(PodFacts {
            annotations: self.0.clone(),
            ..Default::default()
        })
    }
}

/// Reads the pod (and its namespace) from the API server with a kubeconfig file.
#[derive(Debug, Clone)]
pub struct KubeLookup {
    /// The kubeconfig path.
    pub kubeconfig: PathBuf,
}

impl KubeLookup {
    async fn client(&self) -> Result<kube::Client, LookupError> {
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
        kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
    }
}

impl PodLookup for KubeLookup {
    async fn facts(
        &self,
        namespace: &str,
        name: &str,
        namespace_labels: bool,
    ) -> Result<PodFacts, LookupError> {
        let client = self.client().await?;
        let api_error = |what: &str| {
            let (namespace, name) = (namespace.to_string(), format!("{what}{name}"));
            move |source| LookupError::Api {
                namespace,
                name,
                source,
            }
        };
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        let pod = pods.get(name).await.map_err(api_error(""))?;
        let namespace_labels = if namespace_labels {
            let namespaces: kube::Api<Namespace> = kube::Api::all(client);
            let ns = namespaces
                .get(namespace)
                .await
                .map_err(api_error("namespace of "))?;
            Some(ns.metadata.labels.unwrap_or_default())
        } else {
            None
        };
        Ok(PodFacts {
            annotations: pod.metadata.annotations.unwrap_or_default(),
            labels: pod.metadata.labels.unwrap_or_default(),
            namespace_labels,
        })
    }
}
