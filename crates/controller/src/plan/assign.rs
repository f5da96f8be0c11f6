//! Which provider and slot a consumer should try, or why it must wait.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use vpno_api::ProviderPhase;

/// What the assignment planner needs to know about one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSlots {
    /// Namespace of the provider.
    pub namespace: String,
    /// Name of the provider.
    pub name: String,
    /// UID of the provider.
    pub uid: String,
    /// Phase of the provider.
    pub phase: ProviderPhase,
    /// Whether the provider is being deleted.
    pub terminating: bool,
    /// Allowed slots.
    pub max_slots: u32,
    /// Slots currently reserved (by anyone).
    pub taken: BTreeSet<u32>,
    /// Tags of the provider.
    pub tags: Vec<String>,
    /// Allow-list of Mask namespaces, `None` = all.
    pub namespaces: Option<Vec<String>>,
}

impl ProviderSlots {
    /// Number of free slots below `max_slots`.
    pub fn free(&self) -> u32 {
        let used_below = self.taken.iter().filter(|s| **s < self.max_slots).count() as u32;
        self.max_slots.saturating_sub(used_below)
    }

    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a consumer asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRequest<'a> {
    /// Namespace of the consumer (and Mask).
    pub namespace: &'a str,
    /// Tags the Mask accepts (any one suffices); `None` or empty = any.
    pub tags: Option<&'a [String]>,
    /// Provider UID the consumer is pinned to (verification consumers).
    pub pinned: Option<&'a str>,
    /// Spreads concurrent consumers over providers and slots (e.g. the consumer UID).
    pub seed: &'a str,
}

/// Why a provider cannot serve a request at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// The provider is not Ready or Active.
    Phase(ProviderPhase),
    /// The provider is being deleted.
    Terminating,
    /// The request's namespace is not in the provider's `namespaces`.
    Namespace,
    /// None of the requested tags is a tag of the provider.
    Tags,
    /// The request is pinned to another provider.
    NotPinned,
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::Phase(p) => write!(f, "phase {p:?}"),
            Ineligible::Terminating => f.write_str("being deleted"),
            Ineligible::Namespace => f.write_str("namespace not allowed"),
            Ineligible::Tags => f.write_str("no matching tag"),
            Ineligible::NotPinned => f.write_str("not the pinned provider"),
        }
    }
}

/// Whether `provider` may serve `req`, ignoring free slots.
pub fn eligibility(provider: &ProviderSlots, req: &SlotRequest<'_>) -> Result<(), Ineligible> {
    if provider.terminating {
        return Err(Ineligible::Terminating);
    }
    if let Some(pin) = req.pinned {
        // A pinned (verification) consumer may use its provider before it is
        // Ready, but never without credentials.
        if pin != provider.uid {
            return Err(Ineligible::NotPinned);
        }
        return match provider.phase {
            ProviderPhase::ErrSecretNotFound | ProviderPhase::Terminating => {
                Err(Ineligible::Phase(provider.phase))
            }
            _ => Ok(()),
        };
    }
    if !provider.phase.is_assignable() {
        return Err(Ineligible::Phase(provider.phase));
    }
    if let Some(list) = &provider.namespaces
        && !list.iter().any(|n| n == req.namespace)
    {
        return Err(Ineligible::Namespace);
    }
    match req.tags {
        None | Some([]) => Ok(()),
        Some(wanted) if wanted.iter().any(|t| provider.tags.contains(t)) => Ok(()),
        Some(_) => Err(Ineligible::Tags),
    }
}

/// Whether `provider` accepts `req` at all, whatever its phase or free
/// slots: the namespace allow-list, the tags and the pin. A consumer whose
/// provider no longer admits it (its Mask's `providers` were edited) moves.
pub fn admits(provider: &ProviderSlots, req: &SlotRequest<'_>) -> Result<(), Ineligible> {
    let mut probe = provider.clone();
    probe.phase = ProviderPhase::Ready;
    probe.terminating = false;
    eligibility(&probe, req)
}

/// One reservation to try creating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAttempt {
    /// Index of the provider in the planner's input.
    pub provider: usize,
    /// Slot to reserve.
    pub slot: u32,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentPlan {
    /// Try these reservations in order; the first created one wins.
    Try {
        /// Attempts in order of preference.
        attempts: Vec<SlotAttempt>,
        /// Whether free slots were left out of `attempts` (retry soon if all fail).
        truncated: bool,
        /// Message to show if every attempt conflicts.
        waiting_message: String,
    },
    /// Eligible providers exist but all are full.
    Waiting {
        /// Names the providers considered.
        message: String,
    },
    /// No provider is eligible.
    NoProviders {
        /// Names the providers considered and why each was rejected.
        message: String,
    },
}

fn mix(seed: &str, salt: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    salt.hash(&mut h);
    h.finish()
}

/// Most reservations one reconcile tries before giving the API server a rest.
pub const MAX_ATTEMPTS: usize = 24;

/// Plans where `req` should get a slot. Eligible providers with the most free
/// slots come first; ties and the order of slots inside a provider are spread
/// by `req.seed`, so that consumers reconciled at the same time rarely race
/// for the same reservation.
pub fn plan_assignment(providers: &[ProviderSlots], req: &SlotRequest<'_>) -> AssignmentPlan {
    let mut rejected = Vec::new();
    let mut eligible: Vec<(usize, &ProviderSlots)> = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        match eligibility(p, req) {
            Ok(()) => eligible.push((i, p)),
            Err(Ineligible::NotPinned) => {}
            Err(why) => rejected.push(format!("{} ({why})", p.display())),
        }
    }
    if eligible.is_empty() {
        let message = if rejected.is_empty() {
            "no eligible provider: no MaskProvider exists".to_string()
        } else {
            format!("no eligible provider; considered: {}", rejected.join(", "))
        };
        return AssignmentPlan::NoProviders { message };
    }
    eligible.sort_by(|(_, a), (_, b)| {
        b.free()
            .cmp(&a.free())
            .then_with(|| mix(req.seed, &a.uid).cmp(&mix(req.seed, &b.uid)))
    });
    let full: Vec<String> = eligible
        .iter()
        .map(|(_, p)| format!("{} (maxSlots {})", p.display(), p.max_slots))
        .collect();
    let waiting_message = format!(
        "waiting for a free slot; all eligible providers are full: {}",
        full.join(", ")
    );
    let mut attempts = Vec::new();
    let mut truncated = false;
    for (i, p) in &eligible {
        let free: Vec<u32> = (0..p.max_slots).filter(|s| !p.taken.contains(s)).collect();
        if free.is_empty() {
            continue;
        }
        let start = (mix(req.seed, &p.uid) % free.len() as u64) as usize;
        for k in 0..free.len() {
            if attempts.len() == MAX_ATTEMPTS {
                truncated = true;
                break;
            }
            attempts.push(SlotAttempt {
                provider: *i,
                slot: free[(start + k) % free.len()],
            });
        }
    }
    if attempts.is_empty() {
        AssignmentPlan::Waiting {
            message: waiting_message,
        }
    } else {
        AssignmentPlan::Try {
            attempts,
            truncated,
            waiting_message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn provider(name: &str, max: u32, taken: &[u32]) -> ProviderSlots {
        ProviderSlots {
            namespace: "vpn".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            phase: ProviderPhase::Ready,
            terminating: false,
            max_slots: max,
            taken: taken.iter().copied().collect(),
            tags: vec![],
            namespaces: None,
        }
    }

    fn req<'a>(ns: &'a str, tags: Option<&'a [String]>) -> SlotRequest<'a> {
        SlotRequest {
            namespace: ns,
            tags,
            pinned: None,
            seed: "consumer-1",
        }
    }

    #[test]
    fn admission_ignores_phase_and_slots_but_not_tags_namespaces_or_pin() {
        let mut p = provider("a", 1, &[0]);
        p.tags = vec!["eu".into()];
        p.phase = ProviderPhase::ErrVerifyFailed;
        p.terminating = true;
        let eu = vec!["eu".to_string()];
        let us = vec!["us".to_string()];
        assert_eq!(admits(&p, &req("apps", Some(&eu))), Ok(()));
        assert_eq!(admits(&p, &req("apps", None)), Ok(()));
        assert_eq!(admits(&p, &req("apps", Some(&us))), Err(Ineligible::Tags));
        p.namespaces = Some(vec!["other".into()]);
        assert_eq!(
            admits(&p, &req("apps", Some(&eu))),
            Err(Ineligible::Namespace)
        );
        let pinned = SlotRequest {
            pinned: Some("uid-b"),
            ..req("other", None)
        };
        assert_eq!(admits(&p, &pinned), Err(Ineligible::NotPinned));
    }

    #[test]
    fn prefers_provider_with_most_free_slots() {
        let ps = vec![
            provider("a", 3, &[0, 1]),
            provider("b", 5, &[0]),
            provider("c", 2, &[]),
        ];
        let AssignmentPlan::Try { attempts, .. } = plan_assignment(&ps, &req("apps", None)) else {
            panic!()
        };
        assert_eq!(attempts[0].provider, 1, "b has 4 free");
        assert!(attempts[..4].iter().all(|a| a.provider == 1));
        assert!(
            attempts
                .iter()
                .all(|a| !ps[a.provider].taken.contains(&a.slot))
        );
        assert_eq!(attempts.len(), 4 + 2 + 1);
    }

    #[test]
    fn full_providers_mean_waiting_with_their_names() {
        let ps = vec![provider("a", 1, &[0]), provider("b", 2, &[0, 1])];
        match plan_assignment(&ps, &req("apps", None)) {
            AssignmentPlan::Waiting { message } => {
                assert!(message.contains("vpn/a (maxSlots 1)"), "{message}");
                assert!(message.contains("vpn/b (maxSlots 2)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_eligible_provider_explains_each_rejection() {
        let mut a = provider("a", 1, &[]);
        a.phase = ProviderPhase::ErrVerifyFailed;
        let mut b = provider("b", 1, &[]);
        b.namespaces = Some(vec!["other".into()]);
        let mut c = provider("c", 1, &[]);
        c.tags = vec!["eu".into()];
        let tags = vec!["us".to_string()];
        match plan_assignment(&[a, b, c], &req("apps", Some(&tags))) {
            AssignmentPlan::NoProviders { message } => {
                assert!(
                    message.contains("vpn/a (phase ErrVerifyFailed)"),
                    "{message}"
                );
                assert!(
                    message.contains("vpn/b (namespace not allowed)"),
                    "{message}"
                );
                assert!(message.contains("vpn/c (no matching tag)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_assignment(&[], &req("apps", None)),
            AssignmentPlan::NoProviders { .. }
        ));
    }

    #[test]
    fn tags_any_match_and_namespace_allow_list() {
        let mut p = provider("a", 1, &[]);
        p.tags = vec!["eu".into(), "se".into()];
        p.namespaces = Some(vec!["apps".into()]);
        let want = vec!["us".to_string(), "se".to_string()];
        assert_eq!(eligibility(&p, &req("apps", Some(&want))), Ok(()));
        assert_eq!(eligibility(&p, &req("apps", Some(&[]))), Ok(()));
        assert_eq!(
            eligibility(&p, &req("web", None)),
            Err(Ineligible::Namespace)
        );
        p.terminating = true;
        assert_eq!(
            eligibility(&p, &req("apps", None)),
            Err(Ineligible::Terminating)
        );
    }

    #[test]
    fn pinned_requests_use_only_their_provider_even_before_ready() {
        let mut a = provider("a", 1, &[]);
        a.phase = ProviderPhase::Pending;
        let b = provider("b", 1, &[]);
        let r = SlotRequest {
            namespace: "vpn",
            tags: None,
            pinned: Some("uid-a"),
            seed: "s",
        };
        let AssignmentPlan::Try { attempts, .. } = plan_assignment(&[a.clone(), b], &r) else {
            panic!()
        };
        assert!(attempts.iter().all(|x| x.provider == 0));
        a.phase = ProviderPhase::ErrSecretNotFound;
        assert!(matches!(
            plan_assignment(&[a], &r),
            AssignmentPlan::NoProviders { .. }
        ));
    }

    #[test]
    fn slots_at_or_above_max_are_never_offered_and_not_counted_free() {
        // maxSlots lowered from 4 to 2 while slots 0 and 3 are held.
        let p = provider("a", 2, &[0, 3]);
        assert_eq!(p.free(), 1);
        let AssignmentPlan::Try { attempts, .. } = plan_assignment(&[p], &req("apps", None)) else {
            panic!()
        };
        assert_eq!(
            attempts,
            vec![SlotAttempt {
                provider: 0,
                slot: 1
            }]
        );
    }

    #[test]
    fn different_seeds_spread_over_slots() {
        let p = provider("a", 50, &[]);
        let firsts: BTreeSet<u32> = (0..20)
            .map(|i| {
                let seed = format!("consumer-{i}");
                let r = SlotRequest {
                    namespace: "x",
                    tags: None,
                    pinned: None,
                    seed: &seed,
                };
                match plan_assignment(std::slice::from_ref(&p), &r) {
                    AssignmentPlan::Try { attempts, .. } => attempts[0].slot,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert!(
            firsts.len() > 5,
            "first choices should spread, got {firsts:?}"
        );
    }

    #[test]
    fn attempts_are_capped() {
        let p = provider("a", 100, &[]);
        let AssignmentPlan::Try {
            attempts,
            truncated,
            ..
        } = plan_assignment(&[p], &req("x", None))
        else {
            panic!()
        };
        assert_eq!(attempts.len(), MAX_ATTEMPTS);
        assert!(truncated);
    }
}
