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
    }
}
