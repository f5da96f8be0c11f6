//! `MaskReservation`: the lock object for one provider slot.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Holds slot `<slot>` of a provider: named `<provider>-<slot>`, lives in the
/// provider's namespace and is owned by the provider. Creating it is the
/// atomic act of taking the slot; a create conflict means someone else holds it.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "vpn.beebs.dev",
    version = "v1",
    kind = "MaskReservation",
    namespaced,
    status = "MaskReservationStatus",
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".status.lastUpdated"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MaskReservationSpec {
    /// Name of the `MaskConsumer` holding the slot.
    pub name: String,
    /// Namespace of the `MaskConsumer` holding the slot.
    pub namespace: String,
    /// UID of the `MaskConsumer` holding the slot.
    pub uid: String,
}

/// Lifecycle of a reservation.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReservationPhase {
    /// Created, consumer not yet confirmed.
    Pending,
    /// The consumer holds the slot.
    Active,
    /// Being released.
    Terminating,
}

/// Observed state of a `MaskReservation`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskReservationStatus {
    /// Where the reservation is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReservationPhase>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}
