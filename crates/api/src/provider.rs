//! `MaskProvider`: one VPN account, its credentials Secret and its connection limit.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;

/// A VPN account: the Secret holding its credentials (gluetun environment
/// variables), how many simultaneous connections it allows, and how it is
/// verified. Masks are assigned slots of eligible providers.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpn.beebs.dev",
    version = "v1",
    kind = "MaskProvider",
    namespaced,
    status = "MaskProviderStatus",
    printcolumn = r#"{"name":"USED","type":"integer","jsonPath":".status.activeSlots"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".status.lastUpdated"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MaskProviderSpec {
    /// Name of the Secret, in the provider's namespace, holding the VPN
    /// credentials as gluetun environment variables.
    pub secret: String,
    /// Maximum number of simultaneous connections the account allows.
    pub max_slots: u32,
    /// Tags a Mask can select this provider by (any one match suffices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Namespaces whose Masks may use this provider; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// How the credentials are verified before Masks are assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// Verification of a provider by a probe Pod that connects through the VPN
/// and checks that its public IP changes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Skip verification: the provider becomes Ready as soon as its Secret exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<bool>,
    /// How long verification may take (Go duration, e.g. `1m30s`; default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Re-verify this often (Go duration); absent means verify once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub interval: Option<String>,
    /// Objects merged onto the generated verification Pod and its containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<VerifyOverrides>,
}

/// Free-form overrides merged onto the generated verification Pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOverrides {
    /// Merged onto the whole Pod object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_form_object")]
    pub pod: Option<serde_json::Value>,
    /// Merged onto individual containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerOverrides>,
}

/// Per-container overrides for the verification Pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverrides {
    /// Merged onto the init container that records the unmasked public IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_form_object")]
    pub init: Option<serde_json::Value>,
    /// Merged onto the gluetun VPN container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_form_object")]
    pub vpn: Option<serde_json::Value>,
    /// Merged onto the probe container that waits for the public IP to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_form_object")]
    pub probe: Option<serde_json::Value>,
}

/// Lifecycle of a provider.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProviderPhase {
    /// Not yet looked at.
    Pending,
    /// A verification Pod is running.
    Verifying,
    /// Verification succeeded (transitional; becomes Ready).
    Verified,
    /// Usable, no slot in use.
    Ready,
    /// Usable, at least one slot in use.
    Active,
    /// Being deleted; consumers are being unassigned.
    Terminating,
    /// The credentials Secret does not exist.
    ErrSecretNotFound,
    /// Verification failed or timed out.
    ErrVerifyFailed,
}

impl ProviderPhase {
    /// Whether Masks may be assigned to a provider in this phase.
    pub fn is_assignable(self) -> bool {
        matches!(self, ProviderPhase::Ready | ProviderPhase::Active)
    }
}

/// Observed state of a `MaskProvider`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskProviderStatus {
    /// Where the provider is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProviderPhase>,
    /// Human-readable detail, especially for error phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// When verification last succeeded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<String>,
    /// Number of slots currently reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_slots: Option<u32>,
    /// What the last failed verification was made with, while the phase is
    /// `ErrVerifyFailed`: verification is tried again once the spec or the
    /// Secret differ from this (or `verify.interval` says to retry), also
    /// after a controller restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_failure: Option<VerifyFailure>,
}

/// The inputs of a failed verification, so that a restarted controller knows
/// whether anything changed since.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyFailure {
    /// `metadata.generation` of the provider (its spec) that failed.
    pub generation: i64,
    /// `metadata.resourceVersion` of the credentials Secret that failed.
    pub secret_version: String,
}

impl MaskProvider {
    /// The provider's phase, `Pending` when no status has been written.
    pub fn phase(&self) -> ProviderPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(ProviderPhase::Pending)
    }

    /// Whether a Mask in `namespace` asking for `tags` may use this provider,
    /// ignoring the provider's phase and free slots.
    pub fn admits(&self, namespace: &str, tags: Option<&[String]>) -> bool {
        let ns_ok = match &self.spec.namespaces {
            None => true,
            Some(list) => list.iter().any(|n| n == namespace),
        };
        let tag_ok = match tags {
            None => true,
            Some([]) => true,
            Some(wanted) => {
                let have = self.spec.tags.as_deref().unwrap_or_default();
                wanted.iter().any(|t| have.contains(t))
            }
        };
        ns_ok && tag_ok
    }
}

// Keep the literal in the attributes above in step with the shared constant.
const _: () = assert!(DURATION_PATTERN.len() == r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$".len());
