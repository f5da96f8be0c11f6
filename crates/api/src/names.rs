//! Naming rules that several parties (controllers, API server, users) rely on.

/// Name of the `MaskReservation` that holds `slot` of provider `provider`:
/// `<provider-name>-<slot>`. Creating it is how a slot is taken.
pub fn reservation_name(provider: &str, slot: u32) -> String {
    format!("{provider}-{slot}")
}

/// Name of the credentials Secret copied into a consumer's namespace:
/// `<consumer-name>-<provider-uid>`.
pub fn credentials_secret_name(consumer: &str, provider_uid: &str) -> String {
    format!("{consumer}-{provider_uid}")
}

/// The pod annotation that makes a pod a client of a MaskGateway:
/// `<name>` (in the pod's namespace) or `<namespace>/<name>`.
pub const GATEWAY_ANNOTATION: &str = "vpn.beebs.dev/gateway";
/// Label on every object a MaskGateway owns: the MaskGateway's name.
pub const GATEWAY_LABEL: &str = "vpn.beebs.dev/mask-gateway";
/// Label saying which part of a MaskGateway an object is: [`ROLE_GATEWAY`] or [`ROLE_ROUTER`].
pub const GATEWAY_ROLE_LABEL: &str = "vpn.beebs.dev/role";
/// Role of gateway Pods (one tunnel each).
pub const ROLE_GATEWAY: &str = "gateway";
/// Role of router Pods (VIP and nexthops).
pub const ROLE_ROUTER: &str = "router";
/// Label on a gateway's Mask and Pod: its replica ordinal.
pub const GATEWAY_ORDINAL_LABEL: &str = "vpn.beebs.dev/ordinal";
/// Annotation on gateway and router Pods: their address on the gateway
/// network with its prefix length (`192.168.24.16/22`); the CNI plugin gives
/// the Pod exactly this address, routers read gateways' addresses from it.
pub const NETWORK_ADDRESS_ANNOTATION: &str = "vpn.beebs.dev/network-address";

/// Name of the Mask (and MaskConsumer) of gateway `ordinal` of MaskGateway
/// `gateway`: `<gateway>-<ordinal>`.
pub fn gateway_mask_name(gateway: &str, ordinal: u32) -> String {
    format!("{gateway}-{ordinal}")
}

/// The replica ordinal back out of a gateway Mask's name.
pub fn ordinal_of_gateway_mask(gateway: &str, mask: &str) -> Option<u32> {
    mask.strip_prefix(gateway)?.strip_prefix('-')?.parse().ok()
}

/// Parses the slot number back out of a reservation name for `provider`.
pub fn slot_of_reservation(provider: &str, reservation: &str) -> Option<u32> {
    reservation
        .strip_prefix(provider)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_names_round_trip() {
        assert_eq!(reservation_name("nord", 3), "nord-3");
        assert_eq!(slot_of_reservation("nord", "nord-3"), Some(3));
        assert_eq!(slot_of_reservation("nord", "nord-eu-3"), None);
        assert_eq!(slot_of_reservation("nord-eu", "nord-eu-12"), Some(12));
        assert_eq!(credentials_secret_name("job", "abc"), "job-abc");
        assert_eq!(gateway_mask_name("egress", 2), "egress-2");
        assert_eq!(ordinal_of_gateway_mask("egress", "egress-2"), Some(2));
        assert_eq!(ordinal_of_gateway_mask("egress", "egress-eu-2"), None);
    }
}
