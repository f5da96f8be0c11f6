//! MaskProvider controller: phase and `activeSlots`, verification through a
//! Mask of its own, eviction after `maxSlots` is lowered, and unassigning
//! every consumer before the provider goes away.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use vpno_api::duration::parse_duration;
use vpno_api::{
    Mask, MaskConsumer, MaskPhase, MaskProvider, MaskProviderStatus, MaskReservation, MaskSpec,
    ProviderPhase, VerifyFailure,
};

use crate::context::{Ctx, controller_ref, ns_of, uid_of};
use crate::effect::Stamped;
use crate::error::{ControllerError, is_status};
use crate::plan::evict::{HeldSlot, eviction_plan};
use crate::plan::status::{now_rfc3339, slot_count_write_wait};
use crate::plan::verify::{Attempt, VerifyAction, VerifyDecision, VerifyInputs, decide};
use crate::plan::verify_pod::{VerifyPodParams, pod_progress, render_pod};
use crate::plan::{PIN_ANNOTATION, PROVIDER_FINALIZER, finalizers, verify_object_name};
use crate::reservation::owned_by;

const KIND: &str = "MaskProvider";

fn parse_ts(s: Option<&str>) -> Option<jiff::Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// Reconciles one MaskProvider: slots above `maxSlots` are evicted, then
/// the verification step is decided ([`decide`]) and carried out, then the
/// status is written.
pub(crate) async fn reconcile(
    p: Arc<MaskProvider>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = ns_of(p.as_ref(), KIND)?;
    let api: Api<MaskProvider> = Api::namespaced(ctx.client.clone(), &ns);
    if p.meta().deletion_timestamp.is_some() {
        return unassign_all(&p, &ns, &api, &ctx).await;
    }
    ctx.adopt_finalizers(&api, KIND, p.as_ref(), Some(PROVIDER_FINALIZER))
        .await?;
    let secret_version = secret_version(&p, &ns, &ctx).await?;
    let secret_exists = secret_version.is_some();
    // What a failure now would be recorded with (and what a recorded one is compared to).
    let failure_now = VerifyFailure {
        generation: p.meta().generation.unwrap_or_default(),
        secret_version: secret_version.unwrap_or_default(),
    };
    let active_slots = evict_above_max_slots(&p, &ctx).await?;
    let settings = VerifySettings::of(&p, ctx.config.default_verify_timeout);
    let attempt = observe_attempt(&p, &ns, &ctx).await?;
    let inputs = verify_inputs(
        &p,
        &settings,
        secret_exists,
        active_slots,
        &attempt,
        &failure_now,
    );
    let mut d: VerifyDecision = decide(&inputs);
    if let Some(failed) = take_step(&p, &ns, &ctx, &d, &attempt, &settings).await? {
        d = failed;
    }
    if d.action == VerifyAction::FinishAttempt {
        let mapi: Api<Mask> = Api::namespaced(ctx.client.clone(), &ns);
        let uid = attempt.mask.as_ref().and_then(|m| m.uid());
        ctx.delete_if(
            &mapi,
            "Mask",
            &verify_object_name(&p.name_any()),
            uid.as_deref(),
        )
        .await?;
        ctx.metrics().action("finish_verification");
    }
    settings.annotate(&mut d);
    let failure = (d.phase == ProviderPhase::ErrVerifyFailed).then_some(failure_now);
    let later = write_status(&p, &api, &ctx, &d, active_slots, failure).await?;
    let requeue = match (d.requeue, later) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue {
        Some(after) => Action::requeue(after.max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

/// Evicts the consumers of slots at or above `maxSlots`; returns the number
/// of slots reserved.
async fn evict_above_max_slots(p: &MaskProvider, ctx: &Ctx) -> Result<u32, ControllerError> {
    let held = ctx.reservations_of(p);
    let holders: Vec<HeldSlot<Arc<MaskReservation>>> = held
        .iter()
        .map(|(slot, r)| HeldSlot {
            slot: *slot,
            holder: r.clone(),
        })
        .collect();
    for h in eviction_plan(p.spec.max_slots, &holders) {
        evict(p, h.slot, &h.holder, ctx).await?;
    }
    Ok(held.len() as u32)
}

/// `spec.verify` parsed: timeout and interval, and what was wrong with them.
struct VerifySettings {
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

/// The verification attempt in progress, as far as the cache (and a GET of
/// its Pod, once the slot is held) shows it.
struct AttemptView {
    mask: Option<Arc<Mask>>,
    consumer: Option<Arc<MaskConsumer>>,
    attempt: Option<Attempt>,
}

async fn observe_attempt(
    p: &MaskProvider,
    ns: &str,
    ctx: &Ctx,
) -> Result<AttemptView, ControllerError> {
    let uid = uid_of(p, KIND)?;
    let vname = verify_object_name(&p.name_any());
    let mask = ctx
        .masks
        .get(&ObjectRef::new(&vname).within(ns))
        .filter(|m| {
            m.owner_references().iter().any(|o| o.uid == uid)
                && m.meta().deletion_timestamp.is_none()
        });
    let Some(m) = &mask else {
        return Ok(AttemptView {
            mask: None,
            consumer: None,
            attempt: None,
        });
    };
    let started = m
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(jiff::Timestamp::now);
    let consumer = ctx
        .consumers
        .get(&ObjectRef::new(&vname).within(ns))
        .filter(|c| {
            c.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == m.uid().as_ref())
        });
    let slot_held = consumer
        .as_ref()
        .is_some_and(|c| c.phase() == MaskPhase::Active && c.assignment().is_some());
    let pod = if slot_held {
        let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let c_uid = consumer.as_ref().and_then(|c| c.uid());
        ctx.get_opt(&papi, "Pod", &vname)
            .await?
            .filter(|pod| {
                pod.owner_references()
                    .iter()
                    .any(|o| c_uid.as_ref() == Some(&o.uid))
            })
            .map(|pod| pod_progress(&pod))
    } else {
        None
    };
    Ok(AttemptView {
        mask,
        consumer,
        attempt: Some(Attempt {
            started,
            slot_held,
            pod,
        }),
    })
}

fn verify_inputs(
    p: &MaskProvider,
    settings: &VerifySettings,
    secret_exists: bool,
    active_slots: u32,
    attempt: &AttemptView,
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
        secret_exists,
        secret_name: p.spec.secret.clone(),
        active_slots,
        max_slots: p.spec.max_slots,
        attempt: attempt.attempt.clone(),
        changed_since_failure,
        now: jiff::Timestamp::now(),
    }
}

/// Starts an attempt or creates its Pod, as decided; a Pod the API server
/// rejects (bad overrides) turns the decision into a failure, returned.
async fn take_step(
    p: &MaskProvider,
    ns: &str,
    ctx: &Ctx,
    d: &VerifyDecision,
    attempt: &AttemptView,
    settings: &VerifySettings,
) -> Result<Option<VerifyDecision>, ControllerError> {
    let vname = verify_object_name(&p.name_any());
    let uid = uid_of(p, KIND)?;
    match d.action {
        VerifyAction::None | VerifyAction::FinishAttempt => Ok(None),
        VerifyAction::StartAttempt => {
            let mut m = Mask::new(&vname, MaskSpec { providers: None });
            m.metadata.namespace = Some(ns.to_string());
            m.metadata.owner_references = controller_ref(p).map(|o| vec![o]);
            m.metadata.annotations = Some([(PIN_ANNOTATION.to_string(), uid)].into());
            let mapi: Api<Mask> = Api::namespaced(ctx.client.clone(), ns);
            match ctx
                .metrics()
                .write("Mask", mapi.create(&PostParams::default(), &m))
                .await
            {
                Ok(_) => ctx.metrics().action("start_verification"),
                Err(e) if is_status(&e, 409) => {}
                Err(e) => {
                    return Err(ControllerError::kube(
                        format!("creating Mask {ns}/{vname}"),
                        e,
                    ));
                }
            }
            Ok(None)
        }
        VerifyAction::CreatePod => {
            let c = attempt
                .consumer
                .as_ref()
                .ok_or(ControllerError::MissingField {
                    kind: "MaskConsumer",
                    field: "status",
                })?;
            let Err(why) = create_verify_pod(p, ns, ctx, c, settings).await? else {
                return Ok(None);
            };
            Ok(Some(VerifyDecision {
                phase: ProviderPhase::ErrVerifyFailed,
                message: format!("verification failed: {why}"),
                verified_now: false,
                user_error: true,
                action: VerifyAction::FinishAttempt,
                requeue: settings.interval,
            }))
        }
    }
}

/// Creates the verification Pod; `Ok(Err(why))` when it cannot be made
/// (a user error: the overrides).
async fn create_verify_pod(
    p: &MaskProvider,
    ns: &str,
    ctx: &Ctx,
    c: &MaskConsumer,
    settings: &VerifySettings,
) -> Result<Result<(), String>, ControllerError> {
    let vname = verify_object_name(&p.name_any());
    let uid = uid_of(p, KIND)?;
    let secret = c.assignment().map(|a| a.secret.clone()).unwrap_or_default();
    let c_uid = uid_of(c, "MaskConsumer")?;
    let params = VerifyPodParams {
        name: &vname,
        namespace: ns,
        provider_uid: &uid,
        consumer_name: &vname,
        consumer_uid: &c_uid,
        secret: &secret,
        gluetun_image: &ctx.config.verify_images.gluetun,
        curl_image: &ctx.config.verify_images.curl,
        ip_url: &ctx.config.verify_ip_url,
        overrides: settings.verify.overrides.as_ref(),
    };
    let pod = match render_pod(&params) {
        Ok(pod) => pod,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match ctx
        .metrics()
        .write("Pod", papi.create(&PostParams::default(), &pod))
        .await
    {
        Ok(_) => {
            ctx.metrics().action("create_verify_pod");
            Ok(Ok(()))
        }
        Err(e) if is_status(&e, 409) => Ok(Ok(())),
        // The API server rejected the Pod: almost always bad overrides.
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => Ok(Err(format!(
            "the API server rejected the verification pod: {}",
            s.message
        ))),
        Err(e) => Err(ControllerError::kube(
            format!("creating Pod {ns}/{vname}"),
            e,
        )),
    }
}

/// The resourceVersion of the provider's credentials Secret, `None` when it
/// does not exist: from the cache, confirmed with the API server when the
/// cache has not seen it (it may lag behind a Secret created just now).
async fn secret_version(
    p: &MaskProvider,
    ns: &str,
    ctx: &Ctx,
) -> Result<Option<String>, ControllerError> {
    if let Some(s) = ctx.secret(ns, &p.spec.secret) {
        return Ok(Some(
            s.metadata.resource_version.clone().unwrap_or_default(),
        ));
    }
    let sapi: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let fresh = ctx.get_opt(&sapi, "Secret", &p.spec.secret).await?;
    Ok(fresh.map(|s| s.metadata.resource_version.unwrap_or_default()))
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

/// Writes the provider's status; a write that would change only
/// `activeSlots` is spaced out (see [`slot_count_write_wait`]): then the
/// wait is returned and the reconcile comes back for it.
async fn write_status(
    p: &MaskProvider,
    api: &Api<MaskProvider>,
    ctx: &Ctx,
    d: &VerifyDecision,
    active_slots: u32,
    failure: Option<VerifyFailure>,
) -> Result<Option<Duration>, ControllerError> {
    let current = p.status.clone().unwrap_or_default();
    let desired = desired_status(&current, d, active_slots, failure, &now_rfc3339());
    let changed = current.phase != desired.phase || current.message != desired.message;
    let uid = p.uid().unwrap_or_default();
    let only_count = MaskProviderStatus {
        active_slots: current.active_slots,
        ..desired.clone()
    }
    .unstamped()
        == current.unstamped()
        && current.active_slots.is_some()
        && current.active_slots != desired.active_slots;
    if only_count {
        let since = ctx.slot_count_writes.since(&uid);
        if let Some(wait) = slot_count_write_wait(since) {
            return Ok(Some(wait));
        }
    }
    let message = desired.message.clone().unwrap_or_default();
    let wrote = ctx
        .write_status(api, KIND, &p.name_any(), p.status.as_ref(), desired, None)
        .await?;
    if wrote {
        ctx.slot_count_writes.record(&uid);
    }
    if changed && d.user_error {
        ctx.event(
            p,
            EventType::Warning,
            &format!("{:?}", d.phase),
            "Verify",
            message,
        )
        .await;
    } else if changed && d.verified_now {
        ctx.event(p, EventType::Normal, "Verified", "Verify", message)
            .await;
    }
    Ok(None)
}

/// Frees a slot at or above `maxSlots`: its consumer is deleted (its Pods go
/// with it; the Mask gets a new consumer, assigned wherever a slot is free).
async fn evict(
    p: &MaskProvider,
    slot: u32,
    r: &MaskReservation,
    ctx: &Ctx,
) -> Result<(), ControllerError> {
    if r.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &r.spec.namespace);
    let consumer = ctx
        .consumers
        .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace));
    match consumer {
        Some(c)
            if c.uid().as_deref() == Some(r.spec.uid.as_str())
                && c.meta().deletion_timestamp.is_none() =>
        {
            let why = format!(
                "slot {slot} of provider {}/{} is at or above maxSlots {}",
                r.namespace().unwrap_or_default(),
                p.name_any(),
                p.spec.max_slots
            );
            ctx.event(
                c.as_ref(),
                EventType::Warning,
                "Evicted",
                "Evict",
                format!("{why}; this consumer is deleted and its Mask reassigned"),
            )
            .await;
            ctx.event(
                p,
                EventType::Normal,
                "Evicted",
                "Evict",
                format!(
                    "evicting consumer {}/{}: {why}",
                    r.spec.namespace, r.spec.name
                ),
            )
            .await;
            ctx.delete_if(&capi, "MaskConsumer", &r.spec.name, Some(&r.spec.uid))
                .await?;
            ctx.metrics().action("evict");
        }
        // No such consumer (or not seen yet): the reservation controller decides after checking the API server.
        _ => {}
    }
    Ok(())
}

/// The provider is being deleted: unassign every consumer, wait until no
/// reservation is left, then let it go.
async fn unassign_all(
    p: &Arc<MaskProvider>,
    ns: &str,
    api: &Api<MaskProvider>,
    ctx: &Ctx,
) -> Result<Action, ControllerError> {
    if !finalizers::awaits_release(p.finalizers(), Some(PROVIDER_FINALIZER)) {
        return Ok(Action::await_change());
    }
    let name = p.name_any();
    if p.phase() != ProviderPhase::Terminating {
        let desired = MaskProviderStatus {
            phase: Some(ProviderPhase::Terminating),
            message: Some("unassigning consumers before deletion".into()),
            last_updated: None,
            ..p.status.clone().unwrap_or_default()
        };
        // Best effort: the namespace may be going away.
        let _ = ctx
            .write_status(api, KIND, &name, p.status.as_ref(), desired, None)
            .await;
    }
    let uid = uid_of(p.as_ref(), KIND)?;
    let mapi: Api<Mask> = Api::namespaced(ctx.client.clone(), ns);
    ctx.delete_if(&mapi, "Mask", &verify_object_name(&name), None)
        .await?;
    // Consumers assigned to this provider (by status or by reservation).
    let mut victims: Vec<Arc<MaskConsumer>> = ctx.consumers_assigned_to(&uid);
    for (_, r) in ctx.reservations_of(p) {
        if let Some(c) = ctx
            .consumers
            .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace))
            && c.uid().as_deref() == Some(r.spec.uid.as_str())
            && !victims.iter().any(|v| v.uid() == c.uid())
        {
            victims.push(c);
        }
    }
    for c in victims
        .iter()
        .filter(|c| c.meta().deletion_timestamp.is_none())
    {
        let c_ns = c.namespace().unwrap_or_default();
        let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &c_ns);
        ctx.event(c.as_ref(), EventType::Warning, "ProviderDeleted", "Unassign",
            format!("provider {ns}/{name} is being deleted; this consumer is deleted and its Mask reassigned")).await;
        ctx.delete_if(&capi, "MaskConsumer", &c.name_any(), c.uid().as_deref())
            .await?;
        ctx.metrics().action("unassign");
    }
    // Reservations whose consumer is already gone are freed directly.
    let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), ns);
    let remaining = ctx
        .metrics()
        .read("MaskReservation", rapi.list(&ListParams::default()))
        .await
        .map_err(|e| ControllerError::kube(format!("listing MaskReservations in {ns}"), e))?;
    let mut left = 0;
    for r in remaining.items.iter().filter(|r| owned_by(r, p)) {
        left += 1;
        let holder_alive = victims
            .iter()
            .any(|c| c.uid().as_deref() == Some(r.spec.uid.as_str()))
            || ctx
                .consumers
                .get(&ObjectRef::new(&r.spec.name).within(&r.spec.namespace))
                .is_some_and(|c| c.uid().as_deref() == Some(r.spec.uid.as_str()));
        if !holder_alive {
            let capi: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &r.spec.namespace);
            let fresh = ctx.get_opt(&capi, "MaskConsumer", &r.spec.name).await?;
            if fresh.as_ref().and_then(|c| c.uid()).as_deref() != Some(r.spec.uid.as_str()) {
                ctx.delete_if(&rapi, "MaskReservation", &r.name_any(), r.uid().as_deref())
                    .await?;
            }
        }
    }
    if left > 0
        || victims.iter().any(|c| {
            ctx.consumers
                .get(&ObjectRef::from_obj(c.as_ref()))
                .is_some()
        })
    {
        // Reservation and consumer deletions trigger this reconcile; the timer is a safety net.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    ctx.release_finalizers(api, KIND, p.as_ref(), Some(PROVIDER_FINALIZER))
        .await?;
    Ok(Action::await_change())
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
