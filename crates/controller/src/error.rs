//! The one error type of this crate.

use std::net::SocketAddr;

/// Errors of the controllers and their entry points.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("loading Kubernetes client configuration: {0}")]
    Config(String),
    /// Building the Kubernetes client failed.
    #[error("creating Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing a finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The metrics server could not bind its address.
    #[error("binding metrics server to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics server failed.
    #[error("metrics server: {0}")]
    Serve(#[source] std::io::Error),
    /// An object lacks metadata the API server always sets (name, namespace, uid).
    #[error("{kind} has no {field}")]
    MissingField {
        /// Kind of the object.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// `verify.overrides` of a provider produce an invalid Pod (user error).
    #[error("verify.overrides produce an invalid Pod: {0}")]
    InvalidOverrides(String),
    /// A controller loop ended unexpectedly.
    #[error("controller {0} stopped unexpectedly")]
    Stopped(&'static str),
}

impl ControllerError {
    /// Wraps an API error with what was being done.
    pub(crate) fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        ControllerError::Kube {
            action: action.into(),
            source,
        }
    }

    /// A short, fixed label for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Config(_) => "config",
            ControllerError::Client(_) => "client",
            ControllerError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            ControllerError::Finalizer(_) => "finalizer",
            ControllerError::Bind { .. } | ControllerError::Serve(_) => "server",
            ControllerError::MissingField { .. } => "missing_field",
            ControllerError::InvalidOverrides(_) => "invalid_overrides",
            ControllerError::Stopped(_) => "stopped",
        }
    }
}

/// Whether an API error is an HTTP status `code`.
pub(crate) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// Whether an API error says the namespace is being deleted (nothing new may
/// be created in it; its objects are about to go anyway).
pub(crate) fn is_namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 403
        && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}
