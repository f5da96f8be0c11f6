//! Which finalizers an object carries: ours, and never the original
//! vpn-operator's.
//!
//! The original vpn-operator puts [`LEGACY_FINALIZER`] on all four kinds. A
//! cluster it managed is taken over by adopting those objects: a live object
//! trades the original's finalizer for ours (or for none, on kinds that need
//! none); an object already being deleted gets our release work done and then
//! loses both. Without this, deleting such an object would hang forever.

/// The finalizer the original vpn-operator puts on Masks, MaskConsumers,
/// MaskProviders and MaskReservations.
pub const LEGACY_FINALIZER: &str = "vpn.beebs.dev/finalizer";

/// The finalizer list a live object should carry: `ours` present (for kinds
/// that have one), the original's gone, every other party's kept in order.
/// `None` when the list is already right (nothing to write).
pub fn adopted(current: &[String], ours: Option<&str>) -> Option<Vec<String>> {
    let mut new: Vec<String> = current
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .cloned()
        .collect();
    if let Some(ours) = ours
        && !new.iter().any(|f| f == ours)
    {
        new.push(ours.to_string());
    }
    (new != current).then_some(new)
}

/// The finalizer list once our release work is done: neither ours nor the
/// original's. `None` when neither is present.
pub fn released(current: &[String], ours: Option<&str>) -> Option<Vec<String>> {
    let new: Vec<String> = current
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER && Some(f.as_str()) != ours)
        .cloned()
        .collect();
    (new.len() != current.len()).then_some(new)
}

/// Whether an object being deleted waits for our release work: it carries
/// ours or the original's finalizer.
pub fn awaits_release(current: &[String], ours: Option<&str>) -> bool {
    current
        .iter()
        .any(|f| f == LEGACY_FINALIZER || Some(f.as_str()) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const OURS: &str = "vpn.beebs.dev/release-slot";

    #[test]
    fn a_live_object_trades_the_original_finalizer_for_ours() {
        assert_eq!(
            adopted(&v(&[LEGACY_FINALIZER]), Some(OURS)),
            Some(v(&[OURS]))
        );
        assert_eq!(
            adopted(&v(&["x/keep", LEGACY_FINALIZER]), Some(OURS)),
            Some(v(&["x/keep", OURS]))
        );
        assert_eq!(adopted(&v(&[]), Some(OURS)), Some(v(&[OURS])));
        assert_eq!(adopted(&v(&[OURS]), Some(OURS)), None);
    }

    #[test]
    fn kinds_without_a_finalizer_just_lose_the_original() {
        assert_eq!(adopted(&v(&[LEGACY_FINALIZER]), None), Some(v(&[])));
        assert_eq!(adopted(&v(&["x/keep"]), None), None);
        assert_eq!(adopted(&v(&[]), None), None);
    }

    #[test]
    fn release_removes_ours_and_the_original_and_keeps_others() {
        assert_eq!(
            released(&v(&[LEGACY_FINALIZER, "x/keep", OURS]), Some(OURS)),
            Some(v(&["x/keep"]))
        );
        assert_eq!(released(&v(&["x/keep"]), Some(OURS)), None);
        assert_eq!(released(&v(&[LEGACY_FINALIZER]), None), Some(v(&[])));
    }

    #[test]
    fn release_is_owed_for_either_finalizer() {
        assert!(awaits_release(&v(&[LEGACY_FINALIZER]), Some(OURS)));
        assert!(awaits_release(&v(&[OURS]), Some(OURS)));
        assert!(awaits_release(&v(&[LEGACY_FINALIZER]), None));
        assert!(!awaits_release(&v(&["x/keep"]), Some(OURS)));
        assert!(!awaits_release(&v(&[]), None));
    }
}
