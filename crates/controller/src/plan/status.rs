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

/// Least time between two status writes of a provider that change nothing
/// but `activeSlots`: under churn its slots change with every assignment,
/// and the count is informational (slot safety rests on reservations).
pub const SLOT_COUNT_WRITE_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// When a status write that only updates `activeSlots` may happen, given
/// the time since the last such write: `None` now, else after the returned wait.
pub fn slot_count_write_wait(
    since_last: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    match since_last {
        Some(d) if d < SLOT_COUNT_WRITE_GAP => Some(SLOT_COUNT_WRITE_GAP - d),
        _ => None,
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
    fn slot_count_writes_are_spaced() {
        use std::time::Duration;
        assert_eq!(slot_count_write_wait(None), None);
        assert_eq!(slot_count_write_wait(Some(Duration::from_secs(5))), None);
        assert_eq!(
            slot_count_write_wait(Some(Duration::from_millis(300))),
            Some(Duration::from_millis(700))
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let s = now_rfc3339();
        assert!(s.parse::<jiff::Timestamp>().is_ok(), "{s}");
        assert!(s.ends_with('Z'));
    }
}
