//! Pure decisions of the controllers: no I/O, unit-tested.

pub mod assign;
pub mod credentials;
pub mod evict;
pub mod finalizers;
pub mod release;
pub mod status;
pub mod verify;
pub mod verify_pod;

pub use finalizers::LEGACY_FINALIZER;

/// Label the credentials Secret copy carries: the UID of the provider whose
/// Secret it copies (as the original vpn-operator's copies do; users select on it).
pub const OWNER_LABEL: &str = "vpn.beebs.dev/owner";

/// Annotation that pins a Mask (and its consumer) to one provider, by UID.
/// Used by verification Masks, which must use the provider they verify even
/// before it is Ready.
pub const PIN_ANNOTATION: &str = "vpn.beebs.dev/provider-uid";

/// Label on verification Pods naming the UID of the provider they verify.
pub const VERIFY_LABEL: &str = "vpn.beebs.dev/verify-provider";

/// Finalizer that holds a MaskConsumer until its Pods are gone and its slot is released.
pub const CONSUMER_FINALIZER: &str = "vpn.beebs.dev/release-slot";

/// Finalizer that holds a MaskProvider until its consumers are unassigned.
pub const PROVIDER_FINALIZER: &str = "vpn.beebs.dev/unassign-consumers";

/// Name of a provider's verification Mask, consumer and Pod.
pub fn verify_object_name(provider: &str) -> String {
    format!("vpno-verify-{provider}")
}
