//! Which slots a provider must give back after `maxSlots` was lowered.

/// A held slot, as the eviction planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSlot<T> {
    /// Slot number.
    pub slot: u32,
    /// Whatever identifies the holder (reservation, consumer).
    pub holder: T,
}

/// Slots to evict so that every held slot is below `max_slots` (and so at
/// most `max_slots` are held), highest slot first. Slots are numbered
/// `0..maxSlots`, so after lowering the limit exactly the slots at or above
/// it must go; their consumers are reassigned to free lower slots if any.
pub fn eviction_plan<T: Clone>(max_slots: u32, held: &[HeldSlot<T>]) -> Vec<HeldSlot<T>> {
    let mut out: Vec<HeldSlot<T>> = held
        .iter()
        .filter(|h| h.slot >= max_slots)
        .cloned()
        .collect();
    out.sort_by_key(|h| std::cmp::Reverse(h.slot));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(slots: &[u32]) -> Vec<HeldSlot<String>> {
        slots
            .iter()
            .map(|s| HeldSlot {
                slot: *s,
                holder: format!("c{s}"),
            })
            .collect()
    }

    #[test]
    fn evicts_highest_slots_until_within_limit() {
        let plan = eviction_plan(2, &held(&[0, 1, 2, 3, 4]));
        let slots: Vec<u32> = plan.iter().map(|h| h.slot).collect();
        assert_eq!(slots, vec![4, 3, 2]);
        assert_eq!(plan[0].holder, "c4");
    }

    #[test]
    fn nothing_to_evict_within_limit() {
        assert!(eviction_plan(5, &held(&[0, 1, 4])).is_empty());
        assert!(eviction_plan(0, &[] as &[HeldSlot<String>]).is_empty());
    }

    #[test]
    fn zero_slots_evicts_everything() {
        assert_eq!(eviction_plan(0, &held(&[2, 0, 1])).len(), 3);
    }
}
