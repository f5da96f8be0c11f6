//! The provider controller's decisions (pure): evictions above `maxSlots`,
//! the verification step ([`crate::plan::verify::decide`]) and the status.

use std::time::Duration;

use kube::{Resource, ResourceExt};
use vpno_api::duration::parse_duration;
use vpno_api::{Mask, MaskProvider, MaskProviderStatus, MaskSpec, ProviderPhase, VerifyFailure};

use super::observe::{HeldSlot, Live, Observed};
use crate::consumer::Decided;
use crate::effect::{
    Effect, EventNote, Kind, NewObject, Propagation, Stamped, StatusWrite, Target, regarding,
    target_of,
};
use crate::plan::evict::{self, eviction_plan};
use crate::plan::status::slot_count_write_wait;
use crate::plan::verify::{VerifyAction, VerifyDecision, VerifyInputs};
use crate::plan::verify_pod::{VerifyPodParams, render_pod};
use crate::plan::{
    LEGACY_FINALIZER, PIN_ANNOTATION, PROVIDER_FINALIZER, finalizers, verify_object_name,
};

fn parse_ts(s: Option<&str>) -> Option<jiff::Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// Images and URL of the verification Pod (from the controller's configuration).
pub(crate) struct PodImages<'a> {
    pub gluetun: &'a str,
    pub curl: &'a str,
    pub ip_url: &'a str,
}

/// The first decision about a live provider: effects (finalizers,
/// evictions, starting an attempt), the verification decision, and the
/// verification Pod to create (whose creation may turn it into a failure).
pub(crate) struct LiveStep {
    pub effects: Vec<Effect>,
    pub decision: VerifyDecision,
    pub create_pod: Option<k8s_openapi::api::core::v1::Pod>,
    pub settings: VerifySettings,
}

/// What to do about a live provider, up to the verification Pod.
pub(crate) fn decide_live(o: &Observed, live: &Live, images: &PodImages<'_>) -> LiveStep {
    let p = o.provider.as_ref();
    let mut effects = adopt_finalizers(p);
    effects.extend(evictions(p, &live.held));
    let settings = VerifySettings::of(p, live.default_timeout);
    let inputs = verify_inputs(p, &settings, live, &failure_now(p, live));
    let mut decision = crate::plan::verify::decide(&inputs);
    let mut create_pod = None;
    match decision.action {
        VerifyAction::None | VerifyAction::FinishAttempt => {}
        VerifyAction::StartAttempt => {
            effects.push(Effect::Create(NewObject::Mask(Box::new(verify_mask(o)))));
            effects.push(Effect::Count("start_verification"));
        }
        VerifyAction::CreatePod => match verify_pod(o, live, &settings, images) {
            Some(Ok(pod)) => create_pod = Some(pod),
            Some(Err(why)) => decision = failed(why, &settings),
            None => {}
        },
    }
    LiveStep {
        effects,
        decision,
        create_pod,
        settings,
    }
}

/// The decision when the verification Pod cannot be made.
pub(crate) fn failed(why: String, settings: &VerifySettings) -> VerifyDecision {
    VerifyDecision {
        phase: ProviderPhase::ErrVerifyFailed,
        message: format!("verification failed: {why}"),
        verified_now: false,
        user_error: true,
        action: VerifyAction::FinishAttempt,
        requeue: settings.interval,
    }
}

/// What follows the verification decision: ending the attempt, the status
/// (a write that changes only `activeSlots` is spaced out), Events, when to
/// look again.
pub(crate) fn finish(
    o: &Observed,
    live: &Live,
    mut d: VerifyDecision,
    settings: &VerifySettings,
) -> Decided {
    let p = o.provider.as_ref();
    let mut effects = Vec::new();
    if d.action == VerifyAction::FinishAttempt {
        effects.push(Effect::DeleteIf {
            target: verify_mask_target(o),
            uid: live.attempt.mask.as_ref().and_then(|m| m.uid()),
            propagation: Propagation::Background,
        });
        effects.push(Effect::Count("finish_verification"));
    }
    settings.annotate(&mut d);
    let failure = (d.phase == ProviderPhase::ErrVerifyFailed).then(|| failure_now(p, live));
    let active_slots = live.held.len() as u32;
    effects.push(Effect::ShowSlots {
        provider: format!("{}/{}", o.namespace, p.name_any()),
        counts: Some((active_slots, p.spec.max_slots.saturating_sub(active_slots))),
    });
    let current = p.status.clone().unwrap_or_default();
    let desired = desired_status(&current, &d, active_slots, failure, &live.now.to_string());
    let changed = current.phase != desired.phase || current.message != desired.message;
    let only_count = MaskProviderStatus {
        active_slots: current.active_slots,
        ..desired.clone()
    }
    .unstamped()
        == current.unstamped()
        && current.active_slots.is_some()
        && current.active_slots != desired.active_slots;
    let later = if only_count {
        slot_count_write_wait(live.since_count_write)
    } else {
        None
    };
    if later.is_none() && crate::effect::status_changed(p.status.as_ref(), &desired) {
        let message = desired.message.clone().unwrap_or_default();
        effects.push(Effect::PatchStatus {
            target: target_of(Kind::MaskProvider, p),
            status: StatusWrite::Provider {
                uid: o.uid.clone(),
                current: p.status.clone().map(Box::new),
                desired: Box::new(desired),
            },
        });
        if changed && d.user_error {
            effects.push(event(p, true, &format!("{:?}", d.phase), "Verify", message));
        } else if changed && d.verified_now {
            effects.push(event(p, false, "Verified", "Verify", message));
        }
    }
    let requeue = match (d.requeue, later) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match requeue {
        Some(after) => Decided::after(effects, after.max(Duration::from_millis(100))),
        None => Decided::wait(effects),
    }
}

/// What a failure now would be recorded with (and what a recorded one is compared to).
fn failure_now(p: &MaskProvider, live: &Live) -> VerifyFailure {
    VerifyFailure {
        generation: p.meta().generation.unwrap_or_default(),
        secret_version: live.secret_version.clone().unwrap_or_default(),
    }
}

/// Our finalizer instead of the original vpn-operator's.
fn adopt_finalizers(p: &MaskProvider) -> Vec<Effect> {
    let Some(new) = finalizers::adopted(p.finalizers(), Some(PROVIDER_FINALIZER)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if p.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        out.push(Effect::Count("adopt_legacy"));
    }
    out.push(Effect::SetFinalizers {
        target: target_of(Kind::MaskProvider, p),
        current: p.finalizers().to_vec(),
        new,
    });
    out
}

/// Frees the slots at or above `maxSlots`: their consumers are deleted
/// (their Pods go with them; each Mask gets a new consumer, assigned
/// wherever a slot is free). A reservation whose consumer the cache does not
/// show is left to the reservation controller, which asks the API server.
fn evictions(p: &MaskProvider, held: &[HeldSlot]) -> Vec<Effect> {
    let holders: Vec<evict::HeldSlot<&HeldSlot>> = held
        .iter()
        .map(|h| evict::HeldSlot {
            slot: h.slot,
            holder: h,
        })
        .collect();
    let mut effects = Vec::new();
    for e in eviction_plan(p.spec.max_slots, &holders) {
        let h = e.holder;
        let Some(c) = h
            .holder
            .as_ref()
            .filter(|c| c.meta().deletion_timestamp.is_none())
        else {
            continue;
        };
        if h.reservation.meta().deletion_timestamp.is_some() {
            continue;
        }
        let r = &h.reservation;
        let why = format!(
            "slot {} of provider {}/{} is at or above maxSlots {}",
            h.slot,
            r.namespace().unwrap_or_default(),
            p.name_any(),
            p.spec.max_slots
        );
        effects.push(event(
            c.as_ref(),
            true,
            "Evicted",
            "Evict",
            format!("{why}; this consumer is deleted and its Mask reassigned"),
        ));
        effects.push(event(
            p,
            false,
            "Evicted",
            "Evict",
            format!(
                "evicting consumer {}/{}: {why}",
                r.spec.namespace, r.spec.name
            ),
        ));
        effects.push(Effect::DeleteIf {
            target: target_of(Kind::MaskConsumer, c.as_ref()),
            uid: Some(r.spec.uid.clone()),
            propagation: Propagation::Background,
        });
        effects.push(Effect::Count("evict"));
    }
    effects
}

/// The provider's verification Mask: pinned to it, owned by it.
fn verify_mask(o: &Observed) -> Mask {
    let p = o.provider.as_ref();
    let mut m = Mask::new(
        &verify_object_name(&p.name_any()),
        MaskSpec { providers: None },
    );
    m.metadata.namespace = Some(o.namespace.clone());
    m.metadata.owner_references = p.controller_owner_ref(&()).map(|o| vec![o]);
    m.metadata.annotations = Some([(PIN_ANNOTATION.to_string(), o.uid.clone())].into());
    m
}

pub(crate) fn verify_mask_target(o: &Observed) -> Target {
    Target {
        kind: Kind::Mask,
        namespace: o.namespace.clone(),
        name: verify_object_name(&o.provider.name_any()),
    }
}

/// The verification Pod for the attempt's slot; `Some(Err(why))` when the
/// overrides make it impossible, `None` without a consumer holding the slot.
fn verify_pod(
    o: &Observed,
    live: &Live,
    settings: &VerifySettings,
    images: &PodImages<'_>,
) -> Option<Result<k8s_openapi::api::core::v1::Pod, String>> {
    let c = live.attempt.consumer.as_ref()?;
    let vname = verify_object_name(&o.provider.name_any());
    let secret = c.assignment().map(|a| a.secret.clone()).unwrap_or_default();
    let c_uid = c.uid()?;
    let params = VerifyPodParams {
        name: &vname,
        namespace: &o.namespace,
        provider_uid: &o.uid,
        consumer_name: &vname,
        consumer_uid: &c_uid,
        secret: &secret,
        gluetun_image: images.gluetun,
        curl_image: images.curl,
        ip_url: images.ip_url,
        overrides: settings.verify.overrides.as_ref(),
    };
    Some(render_pod(&params).map_err(|e| e.to_string()))
}

pub(crate) fn event<K: Resource<DynamicType = ()>>(
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) -> Effect {
    Effect::Event(EventNote {
        regarding: regarding(obj),
        warning,
        reason: reason.into(),
        action: action.into(),
        note,
    })
}

/// `spec.verify` parsed: timeout and interval, and what was wrong with them.
pub(crate) struct VerifySettings {
    verify: vpno_api::VerifySpec,
    timeout: Duration,
    interval: Option<Duration>,
    bad_spec: Option<String>,
}

impl VerifySettings {
    fn of(p: &MaskProvider, default_timeout: Duration) -> Self {
        let verify = p.spec.verify.clone().unwrap_or_default();
        let mut bad_spec = None;
        let timeout = match verify.timeout.as_deref().map(parse_duration) {
            None => default_timeout,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                bad_spec = Some(format!("spec.verify.timeout: {e}"));
                default_timeout
            }
        };
        let interval = match verify.interval.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(d)) if d.is_zero() => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                bad_spec = Some(format!("spec.verify.interval: {e}"));
                None
            }
        };
        VerifySettings {
            verify,
            timeout,
            interval,
            bad_spec,
        }
    }

    /// Adds what is wrong with the settings to the decision's message.
    fn annotate(&self, d: &mut VerifyDecision) {
        if let Some(msg) = &self.bad_spec {
            d.message = if d.message.is_empty() {
                msg.clone()
            } else {
                format!("{}; {msg}", d.message)
            };
            d.user_error = true;
        }
    }
}

fn verify_inputs(
    p: &MaskProvider,
    settings: &VerifySettings,
    live: &Live,
    failure_now: &VerifyFailure,
) -> VerifyInputs {
    let status = p.status.clone().unwrap_or_default();
    // Remembered in status, so a restarted controller does not retry either.
    let changed_since_failure = p.phase() == ProviderPhase::ErrVerifyFailed
        && status.verify_failure.as_ref() != Some(failure_now);
    VerifyInputs {
        skip: settings.verify.skip.unwrap_or(false),
        timeout: settings.timeout,
        interval: settings.interval,
        phase: p.phase(),
        last_verified: parse_ts(status.last_verified.as_deref()),
        last_updated: parse_ts(status.last_updated.as_deref()),
        secret_exists: live.secret_version.is_some(),
        secret_name: p.spec.secret.clone(),
        active_slots: live.held.len() as u32,
        max_slots: p.spec.max_slots,
        attempt: live.attempt.attempt.clone(),
        changed_since_failure,
        now: live.now,
    }
}

/// The status a provider should show after decision `d`: `lastUpdated`
/// moves only when phase or message change (it is when the phase was
/// entered, which the retry timer reads), `lastVerified` when verification
/// just succeeded (or was skipped for the first time).
fn desired_status(
    current: &MaskProviderStatus,
    d: &VerifyDecision,
    active_slots: u32,
    failure: Option<VerifyFailure>,
    now: &str,
) -> MaskProviderStatus {
    let message = if d.message.is_empty() {
        current.message.clone().unwrap_or_default()
    } else {
        d.message.clone()
    };
    let changed =
        current.phase != Some(d.phase) || current.message.as_deref() != Some(message.as_str());
    MaskProviderStatus {
        phase: Some(d.phase),
        message: Some(message),
        last_updated: if changed || current.last_updated.is_none() {
            Some(now.to_string())
        } else {
            current.last_updated.clone()
        },
        last_verified: if d.verified_now {
            Some(now.to_string())
        } else {
            current.last_verified.clone()
        },
        active_slots: Some(active_slots),
        verify_failure: failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(phase: ProviderPhase, message: &str, verified_now: bool) -> VerifyDecision {
        VerifyDecision {
            phase,
            message: message.into(),
            verified_now,
            user_error: false,
            action: VerifyAction::None,
            requeue: None,
        }
    }

    #[test]
    fn last_updated_moves_with_phase_or_message_only() {
        let current = MaskProviderStatus {
            phase: Some(ProviderPhase::Ready),
            message: Some("verified".into()),
            last_updated: Some("t0".into()),
            last_verified: Some("t0".into()),
            active_slots: Some(0),
            verify_failure: None,
        };
        let busier = desired_status(
            &current,
            &decision(ProviderPhase::Ready, "", false),
            3,
            None,
            "t1",
        );
        assert_eq!(busier.last_updated.as_deref(), Some("t0"));
        assert_eq!(
            busier.message.as_deref(),
            Some("verified"),
            "an empty message keeps the shown one"
        );
        assert_eq!(busier.active_slots, Some(3));
        let failed = VerifyFailure {
            generation: 2,
            secret_version: "9".into(),
        };
        let d = decision(
            ProviderPhase::ErrVerifyFailed,
            "verification failed: x",
            false,
        );
        let s = desired_status(&current, &d, 0, Some(failed.clone()), "t1");
        assert_eq!(s.last_updated.as_deref(), Some("t1"));
        assert_eq!(s.last_verified.as_deref(), Some("t0"));
        assert_eq!(s.verify_failure, Some(failed));
        let ok = desired_status(
            &current,
            &decision(ProviderPhase::Ready, "verified", true),
            0,
            None,
            "t2",
        );
        assert_eq!(ok.last_verified.as_deref(), Some("t2"));
        assert_eq!(ok.last_updated.as_deref(), Some("t0"));
    }
}
