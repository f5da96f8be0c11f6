//! Phases and messages shown to users.

use vpno_api::{MaskPhase, ProviderPhase};

/// Phase of a usable provider: `Active` while any slot is reserved, else `Ready`.
pub fn usage_phase(active_slots: u32) -> ProviderPhase {
    if active_slots > 0 {
        ProviderPhase::Active
    } else {
        ProviderPhase::Ready
    }
}

/// What a Mask shows, given its consumer: the consumer's phase and message;
/// `Terminating` while the consumer is being deleted (e.g. evicted, and about
/// to be replaced); `None` (nothing to write: an absent status reads as
/// Pending) while the consumer does not exist or has no phase yet.
pub fn mask_status_from_consumer(
    consumer: Option<(Option<MaskPhase>, Option<&str>, bool)>,
) -> Option<(MaskPhase, String)> {
    match consumer {
        None | Some((None, _, false)) => None,
        Some((_, _, true)) => Some((
            MaskPhase::Terminating,
            "MaskConsumer is being deleted; a new one follows".to_string(),
        )),
        Some((Some(phase), message, false)) => {
            Some((phase, message.unwrap_or_default().to_string()))
        }
    }
}

/// Current time as the RFC 3339 string used in `status.lastUpdated`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_phase_follows_slots() {
        assert_eq!(usage_phase(0), ProviderPhase::Ready);
        assert_eq!(usage_phase(3), ProviderPhase::Active);
    }

    #[test]
    fn mask_mirrors_consumer_without_panicking_on_missing_status() {
        assert_eq!(mask_status_from_consumer(None), None);
        assert_eq!(mask_status_from_consumer(Some((None, None, false))), None);
        let (p, m) =
            mask_status_from_consumer(Some((Some(MaskPhase::Waiting), Some("full"), false)))
                .unwrap();
        assert_eq!((p, m.as_str()), (MaskPhase::Waiting, "full"));
        assert_eq!(
            mask_status_from_consumer(Some((Some(MaskPhase::Active), None, true)))
                .unwrap()
                .0,
            MaskPhase::Terminating
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let s = now_rfc3339();
        assert!(s.parse::<jiff::Timestamp>().is_ok(), "{s}");
        assert!(s.ends_with('Z'));
    }
}
