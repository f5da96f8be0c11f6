//! The provider reconciler against the recording executor: decisions and
//! the verification Pod's act-then-look-again step, no cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use vpno_api::{
    AssignedProvider, MaskConsumer, MaskConsumerSpec, MaskConsumerStatus, MaskPhase, MaskProvider,
    MaskProviderSpec, MaskProviderStatus, MaskReservation, MaskReservationSpec, ProviderPhase,
    VerifyOverrides, VerifySpec,
};

use super::decide::PodImages;
use super::observe::{AttemptView, HeldSlot, Live, Observed, State, Unassigning};
use super::run;
use crate::effect::tests::{REJECT_ANNOTATION, Recording};
use crate::effect::{Effect, Kind, StatusWrite};
use crate::plan::verify::Attempt;
use crate::plan::{LEGACY_FINALIZER, PROVIDER_FINALIZER};

const IMAGES: PodImages<'static> = PodImages {
    gluetun: "gluetun",
    curl: "curl",
    ip_url: "http://ip",
};

fn provider(max_slots: u32, verify: Option<VerifySpec>) -> MaskProvider {
    let mut p = MaskProvider::new(
        "nord",
        MaskProviderSpec {
            secret: "creds".into(),
            max_slots,
            verify,
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("vpn".into());
    p.metadata.uid = Some("uid-nord".into());
    p.metadata.finalizers = Some(vec![PROVIDER_FINALIZER.into()]);
    p
}

fn skip() -> Option<VerifySpec> {
    Some(VerifySpec {
        skip: Some(true),
        ..Default::default()
    })
}

fn live(held: Vec<HeldSlot>, attempt: AttemptView) -> Live {
    Live {
        secret_version: Some("1".into()),
        held,
        attempt,
        since_count_write: None,
        default_timeout: Duration::from_secs(60),
        now: jiff::Timestamp::now(),
    }
}

fn no_attempt() -> AttemptView {
    AttemptView {
        mask: None,
        consumer: None,
        attempt: None,
    }
}

fn observed(p: MaskProvider, state: State) -> Observed {
    Observed {
        namespace: "vpn".into(),
        uid: p.uid().unwrap(),
        provider: Arc::new(p),
        state,
    }
}

fn consumer(name: &str) -> MaskConsumer {
    let mut c = MaskConsumer::new(name, MaskConsumerSpec::default());
    c.metadata.namespace = Some("apps".into());
    c.metadata.uid = Some(format!("uid-{name}"));
    c
}

fn held(slot: u32, holder: Option<&MaskConsumer>) -> HeldSlot {
    let name = holder.map(|c| c.name_any()).unwrap_or("gone".into());
    let mut r = MaskReservation::new(
        &format!("nord-{slot}"),
        MaskReservationSpec {
            name: name.clone(),
            namespace: "apps".into(),
            uid: format!("uid-{name}"),
        },
    );
    r.metadata.namespace = Some("vpn".into());
    r.metadata.uid = Some(format!("uid-r{slot}"));
    HeldSlot {
        slot,
        reservation: Arc::new(r),
        holder: holder.map(|c| Arc::new(c.clone())),
    }
}

fn provider_status(effects: &[Effect]) -> Option<MaskProviderStatus> {
    effects.iter().find_map(|e| match e {
        Effect::PatchStatus {
            status: StatusWrite::Provider { desired, .. },
            ..
        } => Some((**desired).clone()),
        _ => None,
    })
}

#[tokio::test]
async fn a_skipped_provider_becomes_ready_and_adopts_the_original_finalizer() {
    let mut p = provider(2, skip());
    p.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let ex = Recording::default();
    let action = run(
        &observed(p, State::Live(live(vec![], no_attempt()))),
        &IMAGES,
        &ex,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
    let effects = ex.taken();
    assert!(matches!(&effects[..2],
        [Effect::Count("adopt_legacy"), Effect::SetFinalizers { new, .. }]
            if new == &[PROVIDER_FINALIZER.to_string()]));
    let status = provider_status(&effects).expect("a status");
    assert_eq!(status.phase, Some(ProviderPhase::Ready));
    assert_eq!(status.active_slots, Some(0));
    assert!(
        status.last_verified.is_some(),
        "lastVerified is set on skip"
    );
}

#[tokio::test]
async fn slots_above_a_lowered_max_are_evicted_when_their_holder_is_known() {
    let p = provider(1, skip());
    let (a, b) = (consumer("a"), consumer("b"));
    let slots = vec![held(0, Some(&a)), held(1, Some(&b)), held(2, None)];
    let ex = Recording::default();
    run(
        &observed(p, State::Live(live(slots, no_attempt()))),
        &IMAGES,
        &ex,
    )
    .await
    .unwrap();
    let effects = ex.taken();
    let deleted: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteIf { target, uid, .. } if target.kind == Kind::MaskConsumer => {
                Some((target.name.clone(), uid.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(deleted, [("b".to_string(), Some("uid-b".to_string()))]);
    assert_eq!(
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Count("evict")))
            .count(),
        1
    );
    let evicted: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(n) if n.reason == "Evicted" => Some(n.warning),
            _ => None,
        })
        .collect();
    assert_eq!(
        evicted,
        [true, false],
        "a warning on the consumer, a note on the provider"
    );
}

#[tokio::test]
async fn a_rejected_verification_pod_fails_the_attempt_with_a_warning() {
    let overrides = VerifyOverrides {
        pod: Some(serde_json::json!({"metadata": {"annotations": {REJECT_ANNOTATION: "yes"}}})),
        containers: None,
    };
    let p = provider(
        2,
        Some(VerifySpec {
            overrides: Some(overrides),
            ..Default::default()
        }),
    );
    let mut vmask = vpno_api::Mask::new("vpno-verify-nord", Default::default());
    vmask.metadata.uid = Some("uid-vmask".into());
    vmask.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
    let mut c = consumer("vpno-verify-nord");
    c.metadata.namespace = Some("vpn".into());
    c.status = Some(MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        provider: Some(AssignedProvider {
            secret: "vpno-verify-nord-uid-nord".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let attempt = AttemptView {
        mask: Some(Arc::new(vmask)),
        consumer: Some(Arc::new(c)),
        attempt: Some(Attempt {
            started: jiff::Timestamp::now(),
            slot_held: true,
            pod: None,
        }),
    };
    let ex = Recording::default();
    run(
        &observed(p, State::Live(live(vec![], attempt))),
        &IMAGES,
        &ex,
    )
    .await
    .unwrap();
    let effects = ex.taken();
    assert!(effects.iter().any(|e| matches!(e,
        Effect::DeleteIf { target, uid: Some(u), .. }
            if target.kind == Kind::Mask && u == "uid-vmask")));
    let status = provider_status(&effects).unwrap();
    assert_eq!(status.phase, Some(ProviderPhase::ErrVerifyFailed));
    assert!(status.message.unwrap().contains("rejected"));
    assert!(
        status.verify_failure.is_some(),
        "the failure is remembered in status"
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Event(n) if n.warning))
    );
}

#[tokio::test]
async fn a_count_only_status_write_is_spaced_out() {
    let mut p = provider(4, skip());
    let (a, b) = (consumer("a"), consumer("b"));
    let ex = Recording::default();
    let one = live(vec![held(0, Some(&a))], no_attempt());
    run(&observed(p.clone(), State::Live(one)), &IMAGES, &ex)
        .await
        .unwrap();
    p.status = provider_status(&ex.taken());
    assert_eq!(p.status.as_ref().unwrap().active_slots, Some(1));
    // One more slot taken moments after the last count write: later.
    let two = || live(vec![held(0, Some(&a)), held(1, Some(&b))], no_attempt());
    let mut soon = two();
    soon.since_count_write = Some(Duration::from_millis(1));
    let ex = Recording::default();
    let action = run(&observed(p.clone(), State::Live(soon)), &IMAGES, &ex)
        .await
        .unwrap();
    assert!(provider_status(&ex.taken()).is_none(), "{:?}", ex.taken());
    assert_ne!(action, Action::await_change(), "comes back for the write");
    // Long enough after: written.
    let ex = Recording::default();
    run(&observed(p, State::Live(two())), &IMAGES, &ex)
        .await
        .unwrap();
    assert_eq!(provider_status(&ex.taken()).unwrap().active_slots, Some(2));
}

#[tokio::test]
async fn deletion_unassigns_consumers_frees_orphans_then_lets_go() {
    let mut p = provider(2, skip());
    p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    let a = consumer("a");
    let orphan = held(1, None).reservation.as_ref().clone();
    let busy = Unassigning {
        awaits: true,
        victims: vec![Arc::new(a)],
        reservations_left: 2,
        orphaned: vec![orphan],
        victims_present: true,
    };
    let ex = Recording::default();
    let action = run(&observed(p.clone(), State::Deleting(busy)), &IMAGES, &ex)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let effects = ex.taken();
    let deleted: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteIf { target, .. } => Some((target.kind, target.name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        [
            (Kind::Mask, "vpno-verify-nord".to_string()),
            (Kind::MaskConsumer, "a".to_string()),
            (Kind::MaskReservation, "nord-1".to_string())
        ]
    );
    assert_eq!(
        provider_status(&effects).unwrap().phase,
        Some(ProviderPhase::Terminating)
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::SetFinalizers { .. }))
    );
    let done = Unassigning {
        awaits: true,
        victims: vec![],
        reservations_left: 0,
        orphaned: vec![],
        victims_present: false,
    };
    let ex = Recording::default();
    run(&observed(p, State::Deleting(done)), &IMAGES, &ex)
        .await
        .unwrap();
    assert!(matches!(ex.taken().last(), Some(Effect::SetFinalizers { new, .. }) if new.is_empty()));
}
