//! `Mask` (a request for one connection slot) and `MaskConsumer` (the assignment).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for one VPN connection slot. The controller creates a
/// `MaskConsumer` of the same name that records which provider slot it got.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpn.beebs.dev",
    version = "v1",
    kind = "Mask",
    namespaced,
    status = "MaskStatus",
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".status.lastUpdated"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MaskSpec {
    /// Provider tags this Mask accepts (any one match suffices); absent means any provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
}

/// Lifecycle shared by `Mask` and `MaskConsumer`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum MaskPhase {
    /// Not yet processed.
    Pending,
    /// Every eligible provider is full; assigned as soon as a slot frees.
    Waiting,
    /// A slot is held and the credentials Secret exists.
    Active,
    /// Being deleted.
    Terminating,
    /// No provider is eligible for this Mask.
    ErrNoProviders,
}

/// Observed state of a `Mask`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskStatus {
    /// Where the Mask is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MaskPhase>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The assignment of a Mask to a provider slot. Owns the credentials Secret,
/// and is meant to own every Pod that uses those credentials, so that a slot
/// is released only once nothing uses it any more.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpn.beebs.dev",
    version = "v1",
    kind = "MaskConsumer",
    namespaced,
    status = "MaskConsumerStatus",
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".status.lastUpdated"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MaskConsumerSpec {
    /// Provider tags, copied from the Mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
}

/// Observed state of a `MaskConsumer`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskConsumerStatus {
    /// Where the consumer is in its lifecycle (same set as the Mask's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MaskPhase>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// The provider slot assigned, once one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AssignedProvider>,
}

/// Which provider slot a consumer holds and where its credentials are.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedProvider {
    /// Name of the `MaskProvider`.
    pub name: String,
    /// Namespace of the `MaskProvider`.
    pub namespace: String,
    /// UID of the `MaskProvider`.
    pub uid: String,
    /// Slot index, `0 <= slot < maxSlots`.
    pub slot: u32,
    /// UID of the `MaskReservation` holding the slot.
    pub reservation: String,
    /// Name of the credentials Secret in the consumer's namespace.
    pub secret: String,
}

impl Mask {
    /// The Mask's phase, `Pending` when no status has been written.
    pub fn phase(&self) -> MaskPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(MaskPhase::Pending)
    }
}

impl MaskConsumer {
    /// The consumer's phase, `Pending` when no status has been written.
    pub fn phase(&self) -> MaskPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(MaskPhase::Pending)
    }

    /// The assigned provider slot, if any (never panics on missing status).
    pub fn assignment(&self) -> Option<&AssignedProvider> {
        self.status.as_ref().and_then(|s| s.provider.as_ref())
    }
}
