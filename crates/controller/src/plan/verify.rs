//! The provider verification state machine.

use std::time::Duration;

use jiff::Timestamp;
use vpno_api::ProviderPhase;

use super::status::usage_phase;

/// How far a verification Pod got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProgress {
    /// Not finished; `detail` says what it is doing (for timeout messages).
    Running {
        /// E.g. "container probe: running".
        detail: String,
    },
    /// The probe saw a changed public IP.
    Succeeded,
    /// The Pod failed; `detail` says which container and why.
    Failed {
        /// E.g. "container vpn terminated with exit code 1 (Error)".
        detail: String,
    },
}

/// A verification attempt in progress: its Mask exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When the verification Mask was created.
    pub started: Timestamp,
    /// Whether the verification consumer holds a slot and its credentials.
    pub slot_held: bool,
    /// The Pod, once created.
    pub pod: Option<PodProgress>,
}

/// Everything the verification decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyInputs {
    /// `verify.skip`.
    pub skip: bool,
    /// `verify.timeout` (or the default).
    pub timeout: Duration,
    /// `verify.interval`, if re-verification is wanted.
    pub interval: Option<Duration>,
    /// The phase currently shown.
    pub phase: ProviderPhase,
    /// `status.lastVerified`.
    pub last_verified: Option<Timestamp>,
    /// `status.lastUpdated` (when the current phase was entered).
    pub last_updated: Option<Timestamp>,
    /// Whether the credentials Secret exists.
    pub secret_exists: bool,
    /// Name of the credentials Secret (for messages).
    pub secret_name: String,
    /// Reserved slots (including the verification's own).
    pub active_slots: u32,
    /// `maxSlots` (for messages).
    pub max_slots: u32,
    /// The attempt in progress, if any.
    pub attempt: Option<Attempt>,
    /// Whether the provider's spec changed since verification last failed
    /// (a user fixing overrides or credentials wants a new attempt).
    pub changed_since_failure: bool,
    /// Now.
    pub now: Timestamp,
}

/// What to do about verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyAction {
    /// Nothing.
    None,
    /// Create the verification Mask (it gets a slot like any Mask).
    StartAttempt,
    /// The slot is held: create the verification Pod.
    CreatePod,
    /// The attempt is over: delete the verification Mask (frees its slot).
    FinishAttempt,
}

/// The decision: status to show, action, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyDecision {
    /// Phase to show.
    pub phase: ProviderPhase,
    /// Message to show.
    pub message: String,
    /// New `lastVerified`, when verification just succeeded.
    pub verified_now: bool,
    /// Whether this is a failure a user must hear about (Event).
    pub user_error: bool,
    /// Action to take.
    pub action: VerifyAction,
    /// Re-check after this long even without a watch event.
    pub requeue: Option<Duration>,
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d.is_negative() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(d.as_secs_f64())
    }
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// Decides the verification step of a provider.
pub fn decide(i: &VerifyInputs) -> VerifyDecision {
    let usage = usage_phase(i.active_slots);
    let has_attempt = i.attempt.is_some();
    let finish_or_none = if has_attempt {
        VerifyAction::FinishAttempt
    } else {
        VerifyAction::None
    };
    if !i.secret_exists {
        return VerifyDecision {
            phase: ProviderPhase::ErrSecretNotFound,
            message: format!(
                "credentials Secret {:?} not found in the provider's namespace",
                i.secret_name
            ),
            verified_now: false,
            user_error: true,
            action: finish_or_none,
            requeue: None,
        };
    }
    if i.skip {
        return VerifyDecision {
            phase: usage,
            message: "verification skipped".into(),
            // Recorded once, as the original vpn-operator does on skip.
            verified_now: i.last_verified.is_none(),
            user_error: false,
            action: finish_or_none,
            requeue: None,
        };
    }
    // Was the provider usable before this attempt? Then it stays usable while re-verifying.
    let was_verified = i.last_verified.is_some() && i.phase.is_assignable();
    let in_progress_phase = if was_verified {
        usage
    } else {
        ProviderPhase::Verifying
    };
    if let Some(a) = &i.attempt {
        return in_attempt(i, a, in_progress_phase);
    }
    idle(i, usage, in_progress_phase)
}

/// The step while an attempt is in progress: its result, its timeout, or
/// the next thing it needs.
fn in_attempt(i: &VerifyInputs, a: &Attempt, in_progress_phase: ProviderPhase) -> VerifyDecision {
    let deadline = plus(a.started, i.timeout);
    let timeout_text = vpno_api::duration::format_duration(i.timeout);
    match &a.pod {
        Some(PodProgress::Succeeded) => {
            return VerifyDecision {
                phase: usage_phase(i.active_slots.saturating_sub(1)),
                message: "verified: the public IP changed through the VPN".into(),
                verified_now: true,
                user_error: false,
                action: VerifyAction::FinishAttempt,
                requeue: i.interval,
            };
        }
        Some(PodProgress::Failed { detail }) => {
            return VerifyDecision {
                phase: ProviderPhase::ErrVerifyFailed,
                message: format!("verification failed: {detail}"),
                verified_now: false,
                user_error: true,
                action: VerifyAction::FinishAttempt,
                requeue: i.interval,
            };
        }
        _ => {}
    }
    if i.now >= deadline {
        let what = match (&a.pod, a.slot_held) {
            (Some(PodProgress::Running { detail }), _) => {
                format!("the verification pod did not finish: {detail}")
            }
            (None, true) => "the verification pod was never created".to_string(),
            (None, false) => format!(
                "no slot became free for the verification pod ({} of {} slots in use)",
                i.active_slots, i.max_slots
            ),
            _ => unreachable!("finished pods handled above"),
        };
        return VerifyDecision {
            phase: ProviderPhase::ErrVerifyFailed,
            message: format!("verification timed out after {timeout_text}: {what}"),
            verified_now: false,
            user_error: true,
            action: VerifyAction::FinishAttempt,
            requeue: i.interval,
        };
    }
    let (message, action) = match (&a.pod, a.slot_held) {
        (None, false) => (
            "verifying: waiting for a slot for the verification pod".to_string(),
            VerifyAction::None,
        ),
        (None, true) => (
            "verifying: starting the verification pod".to_string(),
            VerifyAction::CreatePod,
        ),
        (Some(PodProgress::Running { detail }), _) => {
            (format!("verifying: {detail}"), VerifyAction::None)
        }
        _ => unreachable!("finished pods handled above"),
    };
    VerifyDecision {
        phase: in_progress_phase,
        message,
        verified_now: false,
        user_error: false,
        action,
        requeue: Some(until(i.now, deadline) + Duration::from_millis(100)),
    }
}

/// The step with no attempt in progress: start one, retry after a failure,
/// or stay as verified.
fn idle(
    i: &VerifyInputs,
    usage: ProviderPhase,
    in_progress_phase: ProviderPhase,
) -> VerifyDecision {
    // No attempt in progress.
    let start = VerifyDecision {
        phase: in_progress_phase,
        message: "verifying: creating the verification Mask".into(),
        verified_now: false,
        user_error: false,
        action: VerifyAction::StartAttempt,
        requeue: None,
    };
    match (i.phase, i.last_verified, i.interval) {
        (ProviderPhase::ErrVerifyFailed, _, _) if i.changed_since_failure => start,
        (ProviderPhase::ErrVerifyFailed, _, Some(interval)) => {
            let retry_at = plus(i.last_updated.unwrap_or(i.now), interval);
            if i.now >= retry_at {
                start
            } else {
                VerifyDecision {
                    phase: i.phase,
                    message: String::new(),
                    verified_now: false,
                    user_error: false,
                    action: VerifyAction::None,
                    requeue: Some(until(i.now, retry_at)),
                }
            }
        }
        // Failed and no interval: stays failed (message kept) until the spec changes.
        (ProviderPhase::ErrVerifyFailed, _, None) => VerifyDecision {
            phase: i.phase,
            message: String::new(),
            verified_now: false,
            user_error: false,
            action: VerifyAction::None,
            requeue: None,
        },
        (_, None, _) => start,
        (_, Some(last), Some(interval)) if i.now >= plus(last, interval) => start,
        (_, Some(last), interval) => VerifyDecision {
            phase: usage,
            message: "verified".into(),
            verified_now: false,
            user_error: false,
            action: VerifyAction::None,
            requeue: interval.map(|iv| until(i.now, plus(last, iv))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn base() -> VerifyInputs {
        VerifyInputs {
            skip: false,
            timeout: Duration::from_secs(60),
            interval: None,
            phase: ProviderPhase::Pending,
            last_verified: None,
            last_updated: None,
            secret_exists: true,
            secret_name: "creds".into(),
            active_slots: 0,
            max_slots: 2,
            attempt: None,
            changed_since_failure: false,
            now: t(0),
        }
    }

    #[test]
    fn missing_secret_is_an_error_phase() {
        let d = decide(&VerifyInputs {
            secret_exists: false,
            ..base()
        });
        assert_eq!(d.phase, ProviderPhase::ErrSecretNotFound);
        assert!(d.message.contains("\"creds\""));
        assert!(d.user_error);
    }

    #[test]
    fn skip_goes_straight_to_ready_or_active() {
        assert_eq!(
            decide(&VerifyInputs {
                skip: true,
                ..base()
            })
            .phase,
            ProviderPhase::Ready
        );
        assert_eq!(
            decide(&VerifyInputs {
                skip: true,
                active_slots: 1,
                ..base()
            })
            .phase,
            ProviderPhase::Active
        );
    }

    #[test]
    fn skip_records_last_verified_once() {
        let first = decide(&VerifyInputs {
            skip: true,
            ..base()
        });
        assert!(first.verified_now);
        let later = decide(&VerifyInputs {
            skip: true,
            phase: ProviderPhase::Ready,
            last_verified: Some(t(-10)),
            ..base()
        });
        assert!(!later.verified_now);
        assert_eq!(later.phase, ProviderPhase::Ready);
    }

    #[test]
    fn new_provider_starts_an_attempt_then_creates_the_pod_once_a_slot_is_held() {
        let d = decide(&base());
        assert_eq!(
            (d.phase, d.action),
            (ProviderPhase::Verifying, VerifyAction::StartAttempt)
        );
        let waiting = VerifyInputs {
            attempt: Some(Attempt {
                started: t(0),
                slot_held: false,
                pod: None,
            }),
            now: t(5),
            ..base()
        };
        let d = decide(&waiting);
        assert_eq!(
            (d.phase, d.action),
            (ProviderPhase::Verifying, VerifyAction::None)
        );
        assert!(d.message.contains("waiting for a slot"));
        assert_eq!(
            d.requeue,
            Some(Duration::from_secs(55) + Duration::from_millis(100))
        );
        let held = VerifyInputs {
            attempt: Some(Attempt {
                started: t(0),
                slot_held: true,
                pod: None,
            }),
            ..waiting
        };
        assert_eq!(decide(&held).action, VerifyAction::CreatePod);
    }

    #[test]
    fn success_makes_ready_and_frees_the_slot() {
        let i = VerifyInputs {
            active_slots: 1,
            attempt: Some(Attempt {
                started: t(0),
                slot_held: true,
                pod: Some(PodProgress::Succeeded),
            }),
            ..base()
        };
        let d = decide(&i);
        assert_eq!(
            (d.phase, d.action, d.verified_now),
            (ProviderPhase::Ready, VerifyAction::FinishAttempt, true)
        );
    }

    #[test]
    fn failure_and_timeout_say_what_failed() {
        let failed = VerifyInputs {
            attempt: Some(Attempt {
                started: t(0),
                slot_held: true,
                pod: Some(PodProgress::Failed {
                    detail: "container vpn terminated with exit code 1".into(),
                }),
            }),
            ..base()
        };
        let d = decide(&failed);
        assert_eq!(d.phase, ProviderPhase::ErrVerifyFailed);
        assert!(
            d.message
                .contains("container vpn terminated with exit code 1"),
            "{}",
            d.message
        );
        let timed_out = VerifyInputs {
            attempt: Some(Attempt {
                started: t(0),
                slot_held: true,
                pod: Some(PodProgress::Running {
                    detail: "pod phase Pending".into(),
                }),
            }),
            now: t(61),
            ..base()
        };
        let d = decide(&timed_out);
        assert_eq!(
            (d.phase, d.action),
            (ProviderPhase::ErrVerifyFailed, VerifyAction::FinishAttempt)
        );
        assert!(
            d.message.contains("timed out after 1m") && d.message.contains("pod phase Pending"),
            "{}",
            d.message
        );
        let no_slot = VerifyInputs {
            attempt: Some(Attempt {
                started: t(0),
                slot_held: false,
                pod: None,
            }),
            active_slots: 2,
            now: t(61),
            ..base()
        };
        assert!(
            decide(&no_slot)
                .message
                .contains("no slot became free for the verification pod (2 of 2"),
            "{}",
            decide(&no_slot).message
        );
    }

    #[test]
    fn failed_provider_retries_only_after_interval() {
        let failed = VerifyInputs {
            phase: ProviderPhase::ErrVerifyFailed,
            last_updated: Some(t(0)),
            now: t(10),
            ..base()
        };
        assert_eq!(decide(&failed).action, VerifyAction::None);
        let with_interval = VerifyInputs {
            interval: Some(Duration::from_secs(30)),
            ..failed.clone()
        };
        assert_eq!(decide(&with_interval).action, VerifyAction::None);
        assert_eq!(
            decide(&with_interval).requeue,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            decide(&VerifyInputs {
                now: t(31),
                ..with_interval
            })
            .action,
            VerifyAction::StartAttempt
        );
        let edited = VerifyInputs {
            changed_since_failure: true,
            ..failed
        };
        assert_eq!(
            decide(&edited).action,
            VerifyAction::StartAttempt,
            "a spec change retries at once"
        );
    }

    #[test]
    fn verified_provider_reverifies_on_interval_and_stays_usable_meanwhile() {
        let ok = VerifyInputs {
            phase: ProviderPhase::Active,
            last_verified: Some(t(0)),
            active_slots: 1,
            interval: Some(Duration::from_secs(60)),
            now: t(30),
            ..base()
        };
        let d = decide(&ok);
        assert_eq!(
            (d.phase, d.action, d.requeue),
            (
                ProviderPhase::Active,
                VerifyAction::None,
                Some(Duration::from_secs(30))
            )
        );
        let due = VerifyInputs {
            now: t(61),
            ..ok.clone()
        };
        assert_eq!(decide(&due).action, VerifyAction::StartAttempt);
        assert_eq!(
            decide(&due).phase,
            ProviderPhase::Active,
            "re-verification keeps the provider usable"
        );
        let once = VerifyInputs {
            interval: None,
            now: t(10_000),
            ..ok
        };
        assert_eq!(decide(&once).action, VerifyAction::None);
    }
}
